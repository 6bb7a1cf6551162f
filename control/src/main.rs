//! `spate`: run and inspect jobs, and run the cluster's processes.
#![forbid(unsafe_code)]

fn main() {
    spate::cli::main();
}
