use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::AttachMode;

/// The command line every step accepts. `M` is what `--attach` offers: lessons 1–4's
/// [`AttachMode`], or the one of lessons 7 to 14, which adds a path; its default value is `auto`.
#[derive(Debug, Parser)]
pub struct Options<M: ValueEnum + Clone + Send + Sync + 'static = AttachMode> {
    /// How to hook inet_listen(): `auto` tries kprobe, then fentry, then the tracepoint
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: M,

    /// Stop after this many seconds (default: run until Ctrl-C or SIGTERM)
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

fn parse_duration(secs: &str) -> Result<Duration, String> {
    let secs: f64 = secs
        .parse()
        .map_err(|_| format!("`{secs}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{secs}` is not a duration in seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::<AttachMode>::try_parse_from(std::iter::once("step").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_to_auto_without_a_time_limit() {
        let options = parse(&[]).unwrap();
        assert_eq!(options.attach, AttachMode::Auto);
        assert_eq!(options.duration, None);
    }

    #[test]
    fn takes_every_attach_mode_and_a_duration() {
        for (name, mode) in [
            ("auto", AttachMode::Auto),
            ("kprobe", AttachMode::Kprobe),
            ("fentry", AttachMode::Fentry),
            ("tracepoint", AttachMode::Tracepoint),
        ] {
            assert_eq!(parse(&["--attach", name]).unwrap().attach, mode);
        }
        let options = parse(&["--duration", "1.5"]).unwrap();
        assert_eq!(options.duration, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_bad_values_with_a_message() {
        let error = parse(&["--attach", "uprobe"]).unwrap_err().to_string();
        assert!(
            error.contains("possible values: auto, kprobe, fentry, tracepoint"),
            "{error}"
        );
        let error = parse(&["--duration", "soon"]).unwrap_err().to_string();
        assert!(
            error.contains("`soon` is not a number of seconds"),
            "{error}"
        );
        let error = parse(&["--duration=-1"]).unwrap_err().to_string();
        assert!(error.contains("not a duration"), "{error}");
        assert!(parse(&["--bogus"]).is_err());
    }
}
