//! What every stolon binary shares for observability: one log layout (Stolon's zap console
//! layout, or JSON lines), fatal errors at FATAL level after the warnings, the process metrics
//! every Prometheus dashboard expects.

pub mod logging;
pub mod process;

/// What clap prints after a binary's name for `--version`, so that the whole line reads like
/// cobra's (`stolon-keeper version v0.1.0`).
pub const VERSION_TEXT: &str = concat!("version v", env!("CARGO_PKG_VERSION"));

/// Handles a command-line parse failure of a daemon: help and version are printed as clap
/// renders them (exit 0); anything else is one FATAL line naming the problem (exit 1).
pub fn exit_on_clap_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        std::process::exit(0);
    }
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    logging::fatal(first.strip_prefix("error: ").unwrap_or(first))
}

/// `Some(value)` when the boolean flag `id` was given on the command line or in the
/// environment, `None` when it has its default (then colour follows the terminal, as in Stolon).
pub fn explicit_flag(matches: &clap::ArgMatches, id: &str) -> Option<bool> {
    use clap::parser::ValueSource;
    match matches.value_source(id) {
        Some(ValueSource::CommandLine | ValueSource::EnvVariable) => {
            matches.try_get_one::<bool>(id).ok().flatten().copied()
        }
        _ => None,
    }
}

/// The common logging flags as [`logging::LogOptions`], or the one-line reason they are wrong.
pub fn log_options(
    level: &str,
    format: &str,
    color: Option<bool>,
) -> Result<logging::LogOptions, String> {
    if !["debug", "info", "warn", "error"].contains(&level) {
        return Err(format!(
            "invalid log level: {level:?} (valid: debug, info, warn, error)"
        ));
    }
    Ok(logging::LogOptions {
        level: level.to_string(),
        color,
        format: logging::LogFormat::parse(format)?,
    })
}
