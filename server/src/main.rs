//! `relay`: the binary. Everything it does lives in [`relay::cli`], so tests and the wind
//! tunnel's real mode run the same program.

fn main() -> std::process::ExitCode {
    relay::cli::main(std::env::args_os())
}
