//! Text forms of keys and values: UTF-8 as given, hex, base64; the escaped form that
//! shows any bytes on a terminal; JSON strings.

use std::borrow::Cow;
use std::fmt::Write as _;

/// How keys and values are written on the command line and printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8 text as given; printed escaped when not printable.
    Text,
    /// Hexadecimal, two digits per byte.
    Hex,
    /// Standard base64 (RFC 4648, padded); the URL-safe alphabet is accepted on input.
    Base64,
}

impl Encoding {
    /// Bytes from a command-line argument (or stdin, already read as text).
    pub fn decode(self, what: &str, s: &str) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Text => Ok(s.as_bytes().to_vec()),
            Encoding::Hex => hex_decode(s).map_err(|e| format!("{what} is not valid hex: {e}")),
            Encoding::Base64 => {
                base64_decode(s).map_err(|e| format!("{what} is not valid base64: {e}"))
            }
        }
    }

    /// Bytes for display: escaped text, hex or base64.
    pub fn encode(self, bytes: &[u8]) -> Cow<'_, str> {
        match self {
            Encoding::Text => escape(bytes),
            Encoding::Hex => Cow::Owned(hex_encode(bytes)),
            Encoding::Base64 => Cow::Owned(base64_encode(bytes)),
        }
    }

    /// The suffix of JSON field names holding encoded bytes (`key_hex`, `value_base64`).
    pub fn json_suffix(self) -> &'static str {
        match self {
            Encoding::Text => "",
            Encoding::Hex => "_hex",
            Encoding::Base64 => "_base64",
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub fn hex_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Hex digits, either case; whitespace between them is ignored (stdin may end in a
/// newline, and `xxd -p` wraps lines).
pub fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("an odd number of digits".into());
    }
    let nibble = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("{:?} is not a hex digit", char::from(c))),
        }
    };
    digits
        .chunks_exact(2)
        .map(|p| Ok(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Standard or URL-safe base64, padded or not; whitespace is ignored.
pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let chars: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let body = chars
        .iter()
        .position(|&c| c == b'=')
        .map_or(&chars[..], |p| &chars[..p]);
    let padding = chars.len() - body.len();
    if padding > 2 || chars[body.len()..].iter().any(|&c| c != b'=') {
        return Err("'=' is only allowed as padding at the end".into());
    }
    if body.len() % 4 == 1 || (padding > 0 && !chars.len().is_multiple_of(4)) {
        return Err("its length is not that of any base64 text".into());
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in body {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return Err(format!("{:?} is not a base64 character", char::from(c))),
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// Characters a terminal would not show as themselves: controls, and the invisible
/// format characters (zero-width, bidirectional overrides, byte order mark) that can
/// make one key look like another.
fn is_printable(c: char) -> bool {
    !(c.is_control()
        || ('\u{200b}'..='\u{200f}').contains(&c)
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2060}'..='\u{206f}').contains(&c)
        || c == '\u{feff}')
}

/// `bytes` as they are when they are printable UTF-8 with no backslash; otherwise every
/// non-printable character is escaped (`\n`, `\t`, `\r`, `\0`, `\xNN` for a byte that
/// is not UTF-8 or an ASCII control, `\u{NNNN}` for other characters) and `\` becomes
/// `\\`, so that an escaped form never reads as another key's plain form.
pub fn escape(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        if s.chars().all(|c| c != '\\' && is_printable(c)) {
            return Cow::Borrowed(s);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\0' => out.push_str("\\0"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if !is_printable(c) => {
                    let _ = write!(out, "\\u{{{:04x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    Cow::Owned(out)
}

/// Appends `s` as a JSON string literal.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `"name<suffix>": "<bytes>"` for a key or value: a JSON string when the bytes
/// are UTF-8 in text mode, else hex (`name_hex`), so no byte is lost or guessed at.
pub fn json_bytes_field(out: &mut String, name: &str, bytes: &[u8], enc: Encoding) {
    let (suffix, text) = match (enc, std::str::from_utf8(bytes)) {
        (Encoding::Text, Ok(s)) => ("", Cow::Borrowed(s)),
        (Encoding::Text, Err(_)) => ("_hex", Cow::Owned(hex_encode(bytes))),
        (enc, _) => (enc.json_suffix(), enc.encode(bytes)),
    };
    json_str(out, &format!("{name}{suffix}"));
    out.push(':');
    json_str(out, &text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let text = hex_encode(&all);
        assert_eq!(hex_decode(&text).unwrap(), all);
        assert_eq!(
            hex_decode("DE ad\nBE ef\n").unwrap(),
            [0xde, 0xad, 0xbe, 0xef]
        );
        assert!(hex_decode("abc").is_err());
        assert!(hex_decode("zz").is_err());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, coded) in cases {
            assert_eq!(base64_encode(plain.as_bytes()), coded);
            assert_eq!(base64_decode(coded).unwrap(), plain.as_bytes());
            assert_eq!(
                base64_decode(coded.trim_end_matches('=')).unwrap(),
                plain.as_bytes()
            );
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&all)).unwrap(), all);
        assert_eq!(
            base64_decode("-_8=").unwrap(),
            base64_decode("+/8=").unwrap()
        );
        assert!(base64_decode("Zm9v!").is_err());
        assert!(base64_decode("Z").is_err());
        assert!(base64_decode("Zg=x").is_err());
        assert!(base64_decode("Zg===").is_err());
    }

    #[test]
    fn printable_text_is_shown_as_is_and_the_rest_escaped() {
        assert_eq!(escape(b"token:abc \xc3\xa9"), "token:abc \u{e9}");
        assert_eq!(escape(b"a\nb"), "a\\nb");
        assert_eq!(escape(b"a\\nb"), "a\\\\nb");
        assert_eq!(escape(b"\xff\x01ok"), "\\xff\\x01ok");
        assert_eq!(escape("x\u{202e}y".as_bytes()), "x\\u{202e}y");
    }

    #[test]
    fn json_strings_escape_quotes_and_controls() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\n\u{1}");
        assert_eq!(s, r#""a\"b\\c\n\u0001""#);
        let mut s = String::new();
        json_bytes_field(&mut s, "key", b"\xff", Encoding::Text);
        assert_eq!(s, r#""key_hex":"ff""#);
    }
}
