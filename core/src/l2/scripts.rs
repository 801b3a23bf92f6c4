//! The Lua scripts the L2 runs (`lua/*.lua`, as `EVALSHA`: see [`super::protocol`]) and the
//! parsing of their replies.

use std::sync::LazyLock;

use super::protocol::{unexpected, Script};
use super::{LogCursor, Refresh};
use crate::error::{Error, Result};
use crate::resp::Reply;
use crate::tags::TagState;

fn script(name: &'static str, source: &'static str) -> Script {
    Script {
        name,
        source,
        // redis-rs hashes as Redis does (SHA1 of the source).
        sha: redis::Script::new(source).get_hash().to_owned(),
    }
}

pub(super) static UPDATE_TAGS: LazyLock<Script> =
    LazyLock::new(|| script("update_tags", include_str!("lua/update_tags.lua")));
pub(super) static REFRESH: LazyLock<Script> =
    LazyLock::new(|| script("refresh", include_str!("lua/refresh.lua")));
pub(super) static TIME: LazyLock<Script> =
    LazyLock::new(|| script("time", include_str!("lua/time.lua")));

/// Every script (for `SCRIPT LOAD`).
pub(super) fn all() -> [&'static Script; 3] {
    [&UPDATE_TAGS, &REFRESH, &TIME]
}

/// The reply of `lua/refresh.lua`.
pub(crate) fn parse_refresh(reply: Reply) -> Result<Refresh> {
    let mut items = strings(reply, "refresh")?.into_iter();
    let (Some(kind), Some(epoch), Some(last_id), Some(flag)) =
        (items.next(), items.next(), items.next(), items.next())
    else {
        return Err(Error::Redis("refresh: short reply".to_owned()));
    };
    let mut pairs = Vec::with_capacity(items.len() / 2);
    while let Some(tag) = items.next() {
        let Some(state) = items.next() else {
            return Err(Error::Redis("refresh: odd number of tag fields".to_owned()));
        };
        pairs.push((tag, parse_state(&state)?));
    }
    let cursor = if epoch.is_empty() {
        LogCursor::default()
    } else {
        LogCursor { epoch, last_id }
    };
    let flag = flag == "1";
    match kind.as_str() {
        "I" => Ok(Refresh::Incremental {
            cursor,
            changes: pairs,
            more: flag,
        }),
        "R" => Ok(Refresh::Resync {
            cursor,
            all: pairs,
            data_lost: flag,
        }),
        other => Err(Error::Redis(format!(
            "refresh: unknown reply kind {other:?}"
        ))),
    }
}

/// A script's reply: a flat array of strings.
pub(super) fn strings(v: Reply, what: &str) -> Result<Vec<String>> {
    let Reply::Array(items) = v else {
        return Err(unexpected(what, &v));
    };
    items
        .into_iter()
        .map(|item| match item {
            // A reply's own buffer when it holds just this string (no copy).
            Reply::Bulk(b) => String::from_utf8(Vec::from(b))
                .map_err(|_| Error::Redis(format!("{what}: reply is not UTF-8"))),
            Reply::Simple(s) => Ok(s),
            Reply::Int(i) => Ok(i.to_string()),
            other => Err(unexpected(what, &other)),
        })
        .collect()
}

pub(super) fn parse_ms(s: &str) -> Result<f64> {
    match s.parse::<f64>() {
        Ok(v) if crate::clock::is_valid_timestamp_ms(v) => Ok(v),
        _ => Err(Error::Redis(format!("malformed time {s:?}"))),
    }
}

/// `"stale|expired|updated_at"`, empty = none.
pub(super) fn parse_state(s: &str) -> Result<TagState> {
    let mut parts = s.split('|');
    let (Some(stale), Some(expired), Some(updated), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Redis(format!("malformed tag state {s:?}")));
    };
    let opt = |p: &str| -> Result<Option<f64>> {
        if p.is_empty() {
            Ok(None)
        } else {
            parse_ms(p).map(Some)
        }
    };
    Ok(TagState {
        stale: opt(stale)?,
        expired: opt(expired)?,
        updated_at: parse_ms(updated)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn state_strings_round_trip() {
        let s = parse_state("1795357925414.6108||1795357925414.6108").unwrap();
        assert_eq!(s.stale, Some(1_795_357_925_414.610_8));
        assert_eq!(s.expired, None);
        assert_eq!(s.updated_at, 1_795_357_925_414.610_8);
        assert!(parse_state("1|2").is_err());
        assert!(parse_state("1|2|3|4").is_err());
        assert!(parse_state("x||1").is_err());
        assert!(parse_state("||").is_err());
    }
}
