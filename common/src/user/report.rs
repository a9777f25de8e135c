use std::fmt;

/// What a step's `main` returns on failure: the error and its causes on one line
/// (`Error: cannot attach ...: ...`), without a backtrace even when `RUST_BACKTRACE` is set, since
/// these are messages for people, not bug reports.
pub struct Report(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Report {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_one_line_with_its_causes() {
        let error = anyhow::anyhow!("no such file").context("cannot read the kernel's BTF");
        let report = Report::from(error);
        assert_eq!(
            format!("{report:?}"),
            "cannot read the kernel's BTF: no such file"
        );
    }
}
