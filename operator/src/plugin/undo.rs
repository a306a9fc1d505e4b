//! `rollout undo`: which revision a rollback asks for. Pure.
//!
//! The rollback itself is the operator's (the `staticpods.dev/rollback-to` annotation, see
//! docs/rollouts.md); this decides the number, as `kubectl rollout undo` does for a DaemonSet:
//! the revision before the current one unless one is named.

/// What `rollout undo` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UndoPlan {
    /// Annotate the set with this revision number.
    RollBackTo(i64),
    /// The set already asks for that revision: nothing to do (kubectl says "skipped rollback").
    AlreadyAt(i64),
}

/// Why there is nothing to roll back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UndoError {
    /// The set has no StaticPodRevision yet.
    #[error("no rollout history found")]
    NoHistory,
    /// The history holds only the current revision.
    #[error("no revision before revision {0} to roll back to")]
    NoPrevious(i64),
    /// The revision named is not (or no longer) in the history.
    #[error("unable to find revision {0} in the history")]
    NotFound(i64),
}

/// The plan for a set whose history holds revision `numbers`, which asks for revision `current`
/// (`status.updateRevisionNumber`; the newest revision when the status does not say), when the
/// user asked for `requested` (`None` or `0`: the previous revision).
pub fn plan(
    numbers: &[i64],
    current: Option<i64>,
    requested: Option<i64>,
) -> Result<UndoPlan, UndoError> {
    let newest = numbers.iter().copied().max().ok_or(UndoError::NoHistory)?;
    let current = current.unwrap_or(newest);
    let target = match requested.filter(|&n| n != 0) {
        Some(n) if numbers.contains(&n) => n,
        Some(n) => return Err(UndoError::NotFound(n)),
        None => numbers
            .iter()
            .copied()
            .filter(|&n| n < current)
            .max()
            .ok_or(UndoError::NoPrevious(current))?,
    };
    Ok(if target == current {
        UndoPlan::AlreadyAt(target)
    } else {
        UndoPlan::RollBackTo(target)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_revision_before_the_current_one() {
        // Numbers have gaps where reused revisions were renumbered or old ones pruned.
        assert_eq!(plan(&[2, 4, 5], Some(5), None), Ok(UndoPlan::RollBackTo(4)));
        assert_eq!(plan(&[5, 2, 4], None, Some(0)), Ok(UndoPlan::RollBackTo(4)));
        // A status that has not caught up with a new revision: the one it asks for counts.
        assert_eq!(plan(&[2, 4, 5], Some(4), None), Ok(UndoPlan::RollBackTo(2)));
    }

    #[test]
    fn a_named_revision_must_be_in_the_history() {
        assert_eq!(
            plan(&[2, 4, 5], Some(5), Some(2)),
            Ok(UndoPlan::RollBackTo(2))
        );
        assert_eq!(
            plan(&[2, 4, 5], Some(5), Some(3)),
            Err(UndoError::NotFound(3))
        );
        assert_eq!(
            plan(&[2, 4, 5], Some(5), Some(5)),
            Ok(UndoPlan::AlreadyAt(5))
        );
    }

    #[test]
    fn nothing_to_roll_back_to() {
        assert_eq!(plan(&[], None, None), Err(UndoError::NoHistory));
        assert_eq!(plan(&[1], Some(1), None), Err(UndoError::NoPrevious(1)));
    }
}
