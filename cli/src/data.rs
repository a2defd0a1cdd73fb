//! Entries: `get`, `set`, `del`, `keys`, `dump`.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use crate::args::Global;
use crate::codec::{self, Encoding};
use crate::{attach, stdout, units, Failure, Outcome};

fn decode(enc: Encoding, what: &str, s: &str) -> Result<Vec<u8>, Failure> {
    enc.decode(what, s).map_err(Failure::new)
}

pub fn get(
    g: &Global,
    name: &str,
    key: &str,
    key_enc: Encoding,
    value_enc: Encoding,
    raw: bool,
) -> Outcome {
    let key = decode(key_enc, "the key", key)?;
    let cache = attach(g, name)?;
    let Some(value) = cache.get(&key)? else {
        return Err(Failure::new(format!(
            "no fresh entry for key {}",
            key_enc.encode(&key)
        )));
    };
    let mut out = stdout();
    if raw {
        out.write_all(&value)?;
    } else {
        writeln!(out, "{}", value_enc.encode(&value))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The value from stdin: its exact bytes in text mode, else its text decoded. Reads at
/// most a little more than the cache could store, so an endless stdin fails fast.
fn value_from_stdin(enc: Encoding, max_value: usize) -> Result<Vec<u8>, Failure> {
    let cap = match enc {
        Encoding::Text => max_value as u64 + 1,
        // Encoded text is larger than its bytes (hex 2x, base64 4/3x) and may be wrapped.
        Encoding::Hex | Encoding::Base64 => max_value as u64 * 3 + (64 << 10),
    };
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(cap)
        .read_to_end(&mut buf)
        .map_err(|e| Failure::new(format!("reading the value from stdin: {e}")))?;
    if enc == Encoding::Text {
        return Ok(buf);
    }
    let text = String::from_utf8(buf)
        .map_err(|_| Failure::new("the value on stdin is not text (hex or base64 expected)"))?;
    decode(enc, "the value on stdin", &text)
}

pub fn set(
    g: &Global,
    name: &str,
    key: &str,
    value: &str,
    ttl: Option<Duration>,
    key_enc: Encoding,
    value_enc: Encoding,
) -> Outcome {
    let key = decode(key_enc, "the key", key)?;
    let cache = attach(g, name)?;
    let value = if value == "-" {
        value_from_stdin(value_enc, cache.limits().max_value_len)?
    } else {
        decode(value_enc, "the value", value)?
    };
    cache.set(&key, &value, ttl)?;
    Ok(ExitCode::SUCCESS)
}

pub fn incr(
    g: &Global,
    name: &str,
    key: &str,
    by: i64,
    init: i64,
    ttl: Option<Duration>,
    enc: Encoding,
) -> Outcome {
    let key = decode(enc, "the key", key)?;
    let cache = attach(g, name)?;
    let value = cache.incr(&key, by, init, ttl)?;
    let mut out = stdout();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn del(g: &Global, name: &str, key: &str, enc: Encoding) -> Outcome {
    let key = decode(enc, "the key", key)?;
    let cache = attach(g, name)?;
    let mut out = stdout();
    if cache.remove(&key)? {
        writeln!(out, "removed {}", enc.encode(&key))?;
    } else {
        writeln!(
            out,
            "no fresh entry for key {}; nothing removed",
            enc.encode(&key)
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn expired(e: &larder::EntryInfo) -> bool {
    e.ttl == Some(Duration::ZERO)
}

pub fn keys(
    g: &Global,
    name: &str,
    prefix: Option<&str>,
    limit: Option<u64>,
    enc: Encoding,
) -> Outcome {
    let prefix = prefix
        .map(|p| decode(enc, "the prefix", p))
        .transpose()?
        .unwrap_or_default();
    let cache = attach(g, name)?;
    let mut out = stdout();
    let mut n = 0u64;
    // `entries` locks one shard at a time, only while it copies that shard's keys out.
    for e in cache.entries() {
        if limit.is_some_and(|l| n >= l) {
            break;
        }
        let e = e?;
        if expired(&e) || !e.key.starts_with(&prefix) {
            continue;
        }
        writeln!(out, "{}", enc.encode(&e.key))?;
        n += 1;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub struct DumpArgs<'a> {
    pub json: bool,
    pub values: bool,
    pub prefix: Option<&'a str>,
    pub limit: Option<u64>,
    pub key_enc: Encoding,
    pub value_enc: Encoding,
}

pub fn dump(g: &Global, name: &str, a: DumpArgs<'_>) -> Outcome {
    let (kenc, venc) = (a.key_enc, a.value_enc);
    let prefix = a
        .prefix
        .map(|p| decode(kenc, "the prefix", p))
        .transpose()?
        .unwrap_or_default();
    let cache = attach(g, name)?;
    let mut out = stdout();
    if a.json {
        writeln!(out, "[")?;
    } else {
        write!(out, "{:>5}  {:>10}  {:>8}  KEY", "SHARD", "SIZE", "TTL")?;
        writeln!(out, "{}", if a.values { "  VALUE" } else { "" })?;
    }
    let mut n = 0u64;
    for e in cache.entries() {
        if a.limit.is_some_and(|l| n >= l) {
            break;
        }
        let e = e?;
        if !e.key.starts_with(&prefix) {
            continue;
        }
        // The entry may change or go between the listing and this read: a value that is
        // gone is shown as null. `get_stale` also returns an expired entry's value.
        let value = if a.values {
            Some(cache.get_stale(&e.key)?.map(|v| v.value))
        } else {
            None
        };
        if a.json {
            let mut line = String::with_capacity(64 + e.key.len());
            if n > 0 {
                line.push_str(",\n");
            }
            line.push_str("{\"shard\":");
            line.push_str(&e.shard.to_string());
            line.push(',');
            codec::json_bytes_field(&mut line, "key", &e.key, kenc);
            line.push_str(&format!(",\"value_len\":{}", e.value_len));
            match e.ttl {
                Some(t) => line.push_str(&format!(",\"ttl_ms\":{}", t.as_millis())),
                None => line.push_str(",\"ttl_ms\":null"),
            }
            line.push_str(&format!(",\"expired\":{}", expired(&e)));
            match &value {
                Some(Some(v)) => {
                    line.push(',');
                    codec::json_bytes_field(&mut line, "value", v, venc);
                }
                Some(None) => line.push_str(",\"value\":null"),
                None => {}
            }
            line.push('}');
            write!(out, "{line}")?;
        } else {
            let ttl = match e.ttl {
                None => "-".to_string(),
                Some(t) if t.is_zero() => "expired".to_string(),
                Some(t) => units::human_duration(t),
            };
            write!(
                out,
                "{:>5}  {:>10}  {:>8}  {}",
                e.shard,
                units::bytes(e.value_len as u64),
                ttl,
                kenc.encode(&e.key)
            )?;
            match &value {
                Some(Some(v)) => writeln!(out, "  {}", venc.encode(v))?,
                Some(None) => writeln!(out, "  (gone)")?,
                None => writeln!(out)?,
            }
        }
        n += 1;
    }
    if a.json {
        if n > 0 {
            writeln!(out)?;
        }
        writeln!(out, "]")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
