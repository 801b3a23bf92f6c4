//! strata-core: the pure-Rust core of strata-cache.
//!
//! Everything that decides anything lives here (tag rules, expiry, the byte-bounded L1, the
//! Redis L2, the stored envelope, the breaker); the napi binding in `../src` only translates.

pub mod breaker;
pub mod cache;
pub mod clock;
pub mod config;
pub mod doctor;
pub mod entry;
pub mod envelope;
pub mod error;
pub mod l1;
pub mod l2;
pub mod metrics;
pub mod namespace;
pub mod resp;
pub mod store;
pub mod tags;

pub use error::{Error, Result};
