//! Parsing of the `Idempotency-Key` field: an RFC 8941 Item whose bare item is a String.
//!
//! Parameters are accepted (and ignored) when well-formed; anything else is rejected as malformed.

/// The unescaped key, or `None` if the value is not a valid sf-string of `1..=max_len` characters.
pub(crate) fn parse_key(value: &[u8], max_len: usize) -> Option<String> {
    let mut p = Parser {
        input: value,
        pos: 0,
    };
    p.skip_sp();
    let key = p.string(max_len)?;
    p.parameters()?;
    p.skip_sp();
    if p.pos != p.input.len() || key.is_empty() || key.len() > max_len {
        return None;
    }
    Some(key)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// sf-string = DQUOTE *chr DQUOTE; chr = unescaped / escaped; only printable ASCII.
    /// Gives up past `max_len` characters, so a huge value costs no more than a valid one.
    fn string(&mut self, max_len: usize) -> Option<String> {
        if self.bump()? != b'"' {
            return None;
        }
        let mut out = String::new();
        loop {
            if out.len() > max_len {
                return None;
            }
            match self.bump()? {
                b'\\' => match self.bump()? {
                    c @ (b'"' | b'\\') => out.push(char::from(c)),
                    _ => return None,
                },
                b'"' => return Some(out),
                c @ 0x20..=0x7e => out.push(char::from(c)),
                _ => return None,
            }
        }
    }

    /// parameters = *( ";" *SP key [ "=" bare-item ] )
    fn parameters(&mut self) -> Option<()> {
        while self.peek() == Some(b';') {
            self.pos += 1;
            self.skip_sp();
            self.param_key()?;
            if self.peek() == Some(b'=') {
                self.pos += 1;
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn param_key(&mut self) -> Option<()> {
        match self.bump()? {
            b'a'..=b'z' | b'*' => {}
            _ => return None,
        }
        while let Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*') = self.peek() {
            self.pos += 1;
        }
        Some(())
    }

    fn bare_item(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(usize::MAX).map(drop),
            b'-' | b'0'..=b'9' => self.number(),
            b'?' => {
                self.pos += 1;
                matches!(self.bump()?, b'0' | b'1').then_some(())
            }
            b':' => {
                self.pos += 1;
                while let Some(b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=') =
                    self.peek()
                {
                    self.pos += 1;
                }
                (self.bump()? == b':').then_some(())
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'*' => {
                self.pos += 1;
                while let Some(c) = self.peek() {
                    let tchar = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c);
                    if !tchar {
                        break;
                    }
                    self.pos += 1;
                }
                Some(())
            }
            _ => None,
        }
    }

    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        let int_digits = self.pos - start;
        if int_digits == 0 || int_digits > 15 {
            return None;
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let frac = self.pos;
            while let Some(b'0'..=b'9') = self.peek() {
                self.pos += 1;
            }
            let frac_digits = self.pos - frac;
            if int_digits > 12 || frac_digits == 0 || frac_digits > 3 {
                return None;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_strings_with_escapes_and_parameters() {
        assert_eq!(
            parse_key(br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#, 255).as_deref(),
            Some("8e03978e-40d5-43e8-bc93-6894a57f9324")
        );
        assert_eq!(
            parse_key(br#"  "a\"b\\c"  "#, 255).as_deref(),
            Some(r#"a"b\c"#)
        );
        assert_eq!(
            parse_key(br#""k";a=1;b="x";c;d=?1;e=tok/x;f=:aGk=:;g=-1.5"#, 255).as_deref(),
            Some("k")
        );
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            &b"plain-token"[..],
            b"\"\"",
            b"\"unterminated",
            b"\"a\" trailing",
            b"\"bad\\escape\"",
            b"\"tab\there\"",
            b"\"a\";",
            b"\"a\";A=1",
            b"\"a\";a=",
            b"\"a\", \"b\"",
            b"\"\xc3\xa9\"",
            b"42",
        ] {
            assert_eq!(
                parse_key(bad, 255),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn enforces_the_length_limit() {
        let ok = format!("\"{}\"", "a".repeat(255));
        let long = format!("\"{}\"", "a".repeat(256));
        assert!(parse_key(ok.as_bytes(), 255).is_some());
        assert!(parse_key(long.as_bytes(), 255).is_none());
    }

    proptest! {
        #[test]
        fn printable_strings_round_trip(key in "[ -~]{1,255}") {
            let escaped = key.replace('\\', "\\\\").replace('"', "\\\"");
            let value = format!("\"{escaped}\"");
            prop_assert_eq!(parse_key(value.as_bytes(), 255), Some(key));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(key) = parse_key(&bytes, 255) {
                prop_assert!(!key.is_empty() && key.len() <= 255);
                prop_assert!(key.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            }
        }
    }
}
