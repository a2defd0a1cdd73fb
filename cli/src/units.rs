//! Sizes, durations and modes: parsed from arguments, written in human units.

use std::time::Duration;

/// A byte count: `4096`, `64KiB`, `32MiB`, `1.5GiB`; `K`/`M`/`G`/`T` are binary like
/// `KiB`, `KB`/`MB`/`GB`/`TB` decimal (as coreutils reads them). Case does not matter.
pub fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?} in {s:?}: use B, KiB, MiB, GiB (or KB, MB, GB)"
            ))
        }
    };
    let bad = || format!("{s:?} is not a size: use a number with an optional unit, like 32MiB");
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let mut total = int * u128::from(mult);
    if !frac.is_empty() {
        if frac.len() > 18 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let f: u128 = frac.parse().map_err(|_| bad())?;
        total += f * u128::from(mult) / 10u128.pow(frac.len() as u32);
    }
    u64::try_from(total).map_err(|_| format!("{s:?} is too large"))
}

/// A duration: `300s`, `5m`, `1h`, `250ms`, `1d`, or several (`1h30m`); a bare number
/// is seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad =
        || format!("{s:?} is not a duration: use a number with a unit (ms, s, m, h, d), like 5m");
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map(Duration::from_secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Some(Duration::from_millis(n)),
            "s" | "sec" => Some(Duration::from_secs(n)),
            "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            _ => return Err(bad()),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("{s:?} is too long"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A positive duration (a TTL or an interval).
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(d)
}

/// An octal file mode such as `0660` or `660`.
pub fn mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t
        .strip_prefix("0o")
        .or_else(|| t.strip_prefix("0O"))
        .unwrap_or(t);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "{s:?} is not a file mode: use octal permission bits, like 0660"
        )),
    }
}

/// `512 B`, `1.5 KiB`, `32 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let text = format!("{v:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// `250ms`, `42s`, `4m59s`, `2h5m`, `3d4h`: the two largest units.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// `part` of `whole` as a percentage with one decimal; `-` when `whole` is zero.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(size("4096").unwrap(), 4096);
        assert_eq!(size("64KiB").unwrap(), 64 << 10);
        assert_eq!(size("32MiB").unwrap(), 32 << 20);
        assert_eq!(size("32mib").unwrap(), 32 << 20);
        assert_eq!(size("32M").unwrap(), 32 << 20);
        assert_eq!(size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(size("2MB").unwrap(), 2_000_000);
        assert_eq!(size("10 KiB").unwrap(), 10 << 10);
        for bad in ["", "MiB", "12XB", "-1", "1.2.3K", "99999999999999999999TiB"] {
            assert!(size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_take_units_and_compounds() {
        assert_eq!(duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("300s").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "m", "5x", "1.5h", "-5s", "5m3"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
        assert!(positive_duration("0s").is_err());
    }

    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(mode("0660").unwrap(), 0o660);
        assert_eq!(mode("600").unwrap(), 0o600);
        assert_eq!(mode("0o640").unwrap(), 0o640);
        for bad in ["", "0999", "1777", "rw"] {
            assert!(mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_units_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(32 << 20), "32 MiB");
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(299)), "4m59s");
        assert_eq!(human_duration(Duration::from_secs(7500)), "2h5m");
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(1, 0), "-");
    }
}
