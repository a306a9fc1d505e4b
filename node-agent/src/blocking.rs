//! Blocking file-system work on tokio's blocking pool, inside the caller's span: the blocking
//! thread does not inherit it, and its logs should name the node (and the set).

/// Runs `work` on the blocking pool in the current span. `Err` only if it panicked.
pub async fn in_span<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work)).await
}
