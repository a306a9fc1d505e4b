//! Generates the CustomResourceDefinitions of StaticPodSet.
//!
//! - `crdgen` prints all CRDs to stdout as multi-document YAML.
//! - `crdgen <dir>` writes one file per CRD into `<dir>` (`<crd name>.yaml`), as checked in under
//!   `crds/`: `cargo run -p staticpodset-api --bin crdgen -- crds/`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let files = match staticpodset_api::crd_files() {
        Ok(files) => files,
        Err(e) => {
            eprintln!("crdgen: cannot render the CRDs as YAML: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut args = std::env::args_os().skip(1);
    let (dir, extra) = (args.next(), args.next());
    if extra.is_some() {
        eprintln!("usage: crdgen [OUTPUT_DIR]");
        return ExitCode::from(2);
    }
    match dir {
        None => {
            for (_, yaml) in files {
                print!("---\n{yaml}");
            }
        }
        Some(dir) => {
            let dir = PathBuf::from(dir);
            for (name, yaml) in files {
                let path = dir.join(name);
                if let Err(e) = std::fs::write(&path, yaml) {
                    eprintln!("crdgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("wrote {}", path.display());
            }
        }
    }
    ExitCode::SUCCESS
}
