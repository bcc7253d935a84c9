//! Thin entry point: parse the command line, install logging, dispatch, exit code.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    filesync::cli::main()
}
