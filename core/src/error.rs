//! The one error type of the core. Every variant has a stable `code()` that the binding
//! exposes to JS as `err.code`.

use std::fmt;

/// Errors surfaced by strata-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument from the caller has the wrong type or value.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArg {
        /// The argument's name as the caller knows it.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration option (or its environment variable) is invalid.
    #[error("invalid option `{option}`: {reason}")]
    Config {
        /// The option or environment variable name.
        option: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Redis operation did not finish within its deadline.
    #[error("redis operation `{op}` timed out after {ms} ms")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The deadline in milliseconds.
        ms: u64,
    },
    /// Redis is unavailable (connection refused, breaker open, ...).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error.
    #[error("redis error: {0}")]
    Redis(String),
    /// A bug: an invariant did not hold, or a task panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable error code exposed to JS (`err.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArg { .. } => "STRATA_INVALID_ARG",
            Error::Config { .. } => "STRATA_CONFIG",
            Error::Timeout { .. } => "STRATA_TIMEOUT",
            Error::Unavailable(_) => "STRATA_UNAVAILABLE",
            Error::Redis(_) => "STRATA_REDIS",
            Error::Internal(_) => "STRATA_INTERNAL",
        }
    }

    /// Shorthand for a configuration error.
    pub fn config(option: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Config {
            option: option.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Shorthand for an invalid argument.
    pub fn invalid_arg(name: &'static str, reason: impl fmt::Display) -> Self {
        Error::InvalidArg {
            name,
            reason: reason.to_string(),
        }
    }
}

/// Result with the core's error.
pub type Result<T> = std::result::Result<T, Error>;
