//! The Redis keys of a namespace (see the module docs of [`crate::l2`] for the layout).

use crate::envelope::Kind;

/// The Redis keys of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    namespace: String,
    // Made once: every refresh and invalidation names them.
    tag_state: String,
    tag_index: String,
    tag_log: String,
    epoch: String,
}

impl Keys {
    /// The keys of `namespace` (not validated here; [`L2::new`](super::L2::new) does).
    pub fn new(namespace: &str) -> Self {
        let tag = |name: &str| format!("{{sc:{namespace}:tags}}:{name}");
        Keys {
            namespace: namespace.to_owned(),
            tag_state: tag("state"),
            tag_index: tag("idx"),
            tag_log: tag("log"),
            epoch: tag("epoch"),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The key of the entry stored under `store_key`: `sc:<ns>:e:{<xxh3-128 hex>}` for a
    /// `'use cache'` entry, `sc:<ns>:i:{…}` for an incremental-cache one ([`Kind::of_key`]).
    pub fn entry(&self, store_key: &str) -> String {
        let hash = xxhash_rust::xxh3::xxh3_128(store_key.as_bytes());
        let kind = if Kind::of_key(store_key) == Kind::INCREMENTAL {
            'i'
        } else {
            'e'
        };
        format!("sc:{}:{kind}:{{{hash:032x}}}", self.namespace)
    }

    /// The tag state HASH (tag → `"stale|expired|updated_at"`).
    pub fn tag_state(&self) -> &str {
        &self.tag_state
    }

    /// The pruning index ZSET (tag → last time the record can matter, ms).
    pub fn tag_index(&self) -> &str {
        &self.tag_index
    }

    /// The invalidation log STREAM.
    pub fn tag_log(&self) -> &str {
        &self.tag_log
    }

    /// The epoch STRING (identity of the tag state).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_cluster_safe() {
        let k = Keys::new("ns");
        let e = k.entry("/blog/1");
        assert!(e.starts_with("sc:ns:e:{") && e.ends_with('}'), "{e}");
        assert_eq!(e.len(), "sc:ns:e:{}".len() + 32);
        assert_ne!(e, k.entry("/blog/2"));
        assert_eq!(e, Keys::new("ns").entry("/blog/1"));
        // Incremental-cache entries live apart from 'use cache' ones, same hash-tag rule.
        let i = k.entry(&format!(
            "{}/blog/1",
            crate::envelope::INCREMENTAL_KEY_PREFIX
        ));
        assert!(i.starts_with("sc:ns:i:{") && i.ends_with('}'), "{i}");
        assert_eq!(i.len(), e.len());
        for key in [k.tag_state(), k.tag_index(), k.tag_log(), k.epoch()] {
            assert!(key.starts_with("{sc:ns:tags}:"), "{key}");
        }
        assert_eq!(k.tag_state(), "{sc:ns:tags}:state");
        assert_ne!(Keys::new("other").tag_state(), k.tag_state());
    }
}
