//! Helpers for crates that build their own SQL text on top of this one: numbering `?`
//! placeholders for PostgreSQL, and checking a name before it is spliced into a statement.
//!
//! ```
//! use tx_sqlx::sql_text::{is_plain_identifier, numbered_placeholders};
//!
//! let table = "billing_outbox";
//! assert!(is_plain_identifier(table, 48));
//! let sql = numbered_placeholders(&format!("UPDATE {table} SET state = ? WHERE id = ?"));
//! assert_eq!(sql, "UPDATE billing_outbox SET state = $1 WHERE id = $2");
//! ```

/// `sql` with each `?` placeholder replaced by `$1`, `$2`, .. in order, as PostgreSQL numbers
/// its parameters (MySQL and SQLite take `?` as it is).
///
/// A `?` is left alone where it is not a placeholder: inside a string literal (`'..'`, also
/// `E'..'` with backslash escapes), a quoted identifier (`".."`), a dollar-quoted string
/// (`$$..$$`, `$tag$..$tag$`) or a comment (`-- ..` to the end of the line, `/* .. */`,
/// nested as PostgreSQL nests them). Text already numbered (`$1`) is left as it is; one
/// statement should not mix both styles, as the numbering counts only the `?`s.
///
/// ```
/// use tx_sqlx::sql_text::numbered_placeholders;
///
/// assert_eq!(
///     numbered_placeholders("SELECT '?', \"a?\" FROM t WHERE a = ? AND b IN (?, ?) -- why?"),
///     "SELECT '?', \"a?\" FROM t WHERE a = $1 AND b IN ($2, $3) -- why?"
/// );
/// ```
#[must_use]
pub fn numbered_placeholders(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0u32;
    // Every index the scan stops at follows an ASCII byte, so each slice is on a char boundary.
    let (mut copied, mut i) = (0, 0);
    while i < bytes.len() {
        let next = bytes.get(i + 1).copied();
        i = match bytes[i] {
            b'?' => {
                n += 1;
                out.push_str(&sql[copied..i]);
                out.push('$');
                out.push_str(&n.to_string());
                copied = i + 1;
                i + 1
            }
            b'\'' => {
                let escapes = i > 0
                    && bytes[i - 1].eq_ignore_ascii_case(&b'e')
                    && !(i > 1 && is_identifier_byte(bytes[i - 2]));
                quoted_end(bytes, i + 1, b'\'', escapes)
            }
            b'"' => quoted_end(bytes, i + 1, b'"', false),
            b'-' if next == Some(b'-') => bytes[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |p| i + p + 1),
            b'/' if next == Some(b'*') => block_comment_end(bytes, i + 2),
            b'$' if i == 0 || !is_identifier_byte(bytes[i - 1]) => dollar_quoted_end(sql, i),
            _ => i + 1,
        };
    }
    out.push_str(&sql[copied..]);
    out
}

/// Whether `name` is 1 to `max_len` ASCII letters, digits and underscores, not starting with
/// a digit: a name that can be spliced into SQL text as it is, unquoted, on every database.
///
/// ```
/// use tx_sqlx::sql_text::is_plain_identifier;
///
/// assert!(is_plain_identifier("tx_outbox", 48));
/// assert!(is_plain_identifier("_t1", 48));
/// assert!(!is_plain_identifier("1t", 48));
/// assert!(!is_plain_identifier("t; DROP TABLE x", 48));
/// assert!(!is_plain_identifier("", 48));
/// assert!(!is_plain_identifier("too_long", 4));
/// ```
#[must_use]
pub fn is_plain_identifier(name: &str, max_len: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_len
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(is_identifier_byte)
}

fn is_identifier_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Where the quoted text starting at `from` ends (after its closing `quote`). A doubled quote
/// needs no case of its own: it closes the text and opens the next at once.
fn quoted_end(bytes: &[u8], from: usize, quote: u8, escapes: bool) -> usize {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Where the block comment whose body starts at `from` ends, counting nested comments.
fn block_comment_end(bytes: &[u8], from: usize) -> usize {
    let (mut depth, mut i) = (1, from);
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'/', Some(b'*')) => (depth, i) = (depth + 1, i + 2),
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Where a dollar-quoted string opening at `start` (`$$` or `$tag$`) ends; just past the `$`
/// when none opens there (`$1` is a parameter, not a tag).
fn dollar_quoted_end(sql: &str, start: usize) -> usize {
    let rest = &sql.as_bytes()[start + 1..];
    let Some(len) = rest.iter().position(|&b| b == b'$') else {
        return start + 1;
    };
    let tag = &rest[..len];
    if tag.first().is_some_and(u8::is_ascii_digit) || !tag.iter().all(|&b| is_identifier_byte(b)) {
        return start + 1;
    }
    let delimiter = &sql[start..start + len + 2];
    let body = start + len + 2;
    sql[body..]
        .find(delimiter)
        .map_or(sql.len(), |p| body + p + delimiter.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_literals_identifiers_and_comments() {
        let cases = [
            ("a = ? AND b IN (?, ?)", "a = $1 AND b IN ($2, $3)"),
            ("no placeholders", "no placeholders"),
            ("", ""),
            ("x = 'it''s ?' AND y = ?", "x = 'it''s ?' AND y = $1"),
            ("x = E'\\'?' AND y = ?", "x = E'\\'?' AND y = $1"),
            // Not an E-string: the backslash ends nothing.
            ("x = type'\\' AND y = ?", "x = type'\\' AND y = $1"),
            ("\"col?\" = ?", "\"col?\" = $1"),
            ("a = ? -- b = ?\n AND c = ?", "a = $1 -- b = ?\n AND c = $2"),
            ("a = ? -- b = ?", "a = $1 -- b = ?"),
            ("/* ? /* ? */ ? */ a = ?", "/* ? /* ? */ ? */ a = $1"),
            (
                "$$ ? $$ || ? || $f$ $$ ? $f$",
                "$$ ? $$ || $1 || $f$ $$ ? $f$",
            ),
            ("a = $1", "a = $1"),
            ("a$b = ? AND c = ?", "a$b = $1 AND c = $2"),
            ("x = 'é?' AND y = ?", "x = 'é?' AND y = $1"),
            ("'unterminated ?", "'unterminated ?"),
            ("a - ? / ?", "a - $1 / $2"),
        ];
        for (sql, numbered) in cases {
            assert_eq!(numbered_placeholders(sql), numbered, "{sql}");
        }
        let many = ["?"; 12].join(",");
        assert!(numbered_placeholders(&many).ends_with("$11,$12"));
    }

    #[test]
    fn plain_identifiers() {
        for ok in ["tx_saga", "t1", "_", "A_b_9"] {
            assert!(is_plain_identifier(ok, 48), "{ok}");
        }
        for bad in ["1t", "", "a b", "a-b", "a;b", "é", "t\"", &"x".repeat(49)] {
            assert!(!is_plain_identifier(bad, 48), "{bad}");
        }
        assert!(is_plain_identifier(&"x".repeat(48), 48));
    }
}
