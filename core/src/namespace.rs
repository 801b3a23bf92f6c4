//! The namespace that prefixes every Redis key, resolved at run time (design notes §8).
//!
//! Order: an explicit namespace (`namespace` option / `STRATA_NAMESPACE`), then the platform's
//! deployment id (`NEXT_DEPLOYMENT_ID`, then [`PLATFORM_VARS`]), then the running app's build id
//! read from `<distDir>/BUILD_ID` when the server starts. It is never taken from the environment
//! of `next build`: the handler does not talk to Redis during the build at all (see `index.js`).
//! Two deployments sharing one Redis therefore never see each other's entries or invalidations.

use std::path::Path;

use crate::config::validate_namespace;
use crate::error::{Error, Result};

/// Deployment ids set by common platforms, in the order they are tried after
/// `NEXT_DEPLOYMENT_ID`. Each identifies one deployment (one build of the app).
pub const PLATFORM_VARS: &[&str] = &[
    "VERCEL_DEPLOYMENT_ID",  // Vercel
    "RAILWAY_DEPLOYMENT_ID", // Railway
    "RENDER_GIT_COMMIT",     // Render (one deploy per commit)
    "FLY_IMAGE_REF",         // Fly.io (the image of this release)
    "K_REVISION",            // Cloud Run / Knative (the revision)
    "HEROKU_SLUG_COMMIT",    // Heroku (with runtime-dyno-metadata)
    "DEPLOY_ID",             // Netlify
    "CF_PAGES_COMMIT_SHA",   // Cloudflare Pages
];

/// Where the namespace came from (logged once at start-up; a namespace is not a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The `namespace` option or `STRATA_NAMESPACE`.
    Explicit,
    /// An environment variable naming the deployment.
    Env(&'static str),
    /// `<distDir>/BUILD_ID` of the running app.
    BuildId,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Explicit => f.write_str("STRATA_NAMESPACE / namespace option"),
            Source::Env(name) => f.write_str(name),
            Source::BuildId => f.write_str(".next/BUILD_ID"),
        }
    }
}

/// Resolves the namespace. `dist_dir` is the app's `.next` directory at run time.
pub fn resolve(
    explicit: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    dist_dir: &Path,
) -> Result<(String, Source)> {
    if let Some(ns) = explicit {
        validate_namespace(ns)?;
        return Ok((ns.to_owned(), Source::Explicit));
    }
    let non_empty = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    for name in std::iter::once(&"NEXT_DEPLOYMENT_ID").chain(PLATFORM_VARS.iter()) {
        if let Some(v) = non_empty(name) {
            return Ok((sanitize(&v), Source::Env(name)));
        }
    }
    let path = dist_dir.join("BUILD_ID");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok((sanitize(id.trim()), Source::BuildId)),
        _ => Err(Error::config(
            "namespace",
            format!(
                "no namespace: set STRATA_NAMESPACE (or NEXT_DEPLOYMENT_ID), or start the app where {} exists",
                path.display()
            ),
        )),
    }
}

/// Makes any id usable inside a key: printable ASCII without spaces or braces (braces would
/// change the Cluster hash tag), at most 64 characters (longer ids are shortened with a hash
/// of the whole so distinct ids stay distinct).
pub fn sanitize(id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '{' && c != '}' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.len() <= 64 {
        return clean;
    }
    let hash = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
    format!("{}-{hash:016x}", &clean[..47])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::env_of;

    fn dist_with_build_id(id: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "strata-ns-{}-{}",
            std::process::id(),
            xxhash_rust::xxh3::xxh3_64(id.as_bytes())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("BUILD_ID"), format!("{id}\n")).unwrap();
        dir
    }

    #[test]
    fn explicit_wins_then_deployment_ids_then_build_id() {
        let dist = dist_with_build_id("b1d-123");
        let (ns, src) =
            resolve(Some("mine"), env_of(&[("NEXT_DEPLOYMENT_ID", "d")]), &dist).unwrap();
        assert_eq!((ns.as_str(), src), ("mine", Source::Explicit));
        let (ns, src) = resolve(
            None,
            env_of(&[
                ("NEXT_DEPLOYMENT_ID", "dpl_1"),
                ("VERCEL_DEPLOYMENT_ID", "v"),
            ]),
            &dist,
        )
        .unwrap();
        assert_eq!(
            (ns.as_str(), src),
            ("dpl_1", Source::Env("NEXT_DEPLOYMENT_ID"))
        );
        let (ns, src) = resolve(None, env_of(&[("K_REVISION", "svc-00042-abc")]), &dist).unwrap();
        assert_eq!(
            (ns.as_str(), src),
            ("svc-00042-abc", Source::Env("K_REVISION"))
        );
        let (ns, src) = resolve(None, env_of(&[("NEXT_DEPLOYMENT_ID", "  ")]), &dist).unwrap();
        assert_eq!((ns.as_str(), src), ("b1d-123", Source::BuildId));
    }

    #[test]
    fn missing_everything_is_a_config_error() {
        let err = resolve(None, env_of(&[]), Path::new("/nonexistent/.next")).unwrap_err();
        assert_eq!(err.code(), "STRATA_CONFIG");
        assert!(err.to_string().contains("STRATA_NAMESPACE"));
    }

    #[test]
    fn invalid_explicit_namespace_is_refused() {
        assert!(resolve(Some("a b"), env_of(&[]), Path::new("/x")).is_err());
    }

    #[test]
    fn sanitize_keeps_ids_distinct_and_key_safe() {
        assert_eq!(sanitize("abc-1"), "abc-1");
        assert_eq!(sanitize("a{b} c"), "a_b__c");
        let long_a = "x".repeat(100) + "a";
        let long_b = "x".repeat(100) + "b";
        assert_ne!(sanitize(&long_a), sanitize(&long_b));
        assert!(sanitize(&long_a).len() <= 64);
        validate_namespace(&sanitize("ünïcode{}")).unwrap();
    }
}
