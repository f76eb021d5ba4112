//! Query strings as the API server and the agent's endpoint read them (`a=b&c=d`,
//! percent-decoded, `+` as a space), with `form_urlencoded` doing the decoding.

use std::collections::HashMap;

/// The pairs of a query string in order, decoded.
pub fn pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

/// The pairs of a query string as a map; a later duplicate wins.
pub fn map(query: &str) -> HashMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

/// A percent-decoded path segment (`+` stays `+`; malformed escapes stay as written).
pub fn decode_segment(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Whether a boolean parameter is on: `name`, `name=true` or `name=1`.
pub fn flag(pairs: &[(String, String)], name: &str) -> bool {
    pairs
        .iter()
        .any(|(k, v)| k == name && (v == "true" || v == "1" || v.is_empty()))
}

/// What [`escape`] leaves alone: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A value escaped for a query string (`labelSelector=app%3Dweb`).
pub fn escape(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        let query = map("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&watch=0&bad=%zz&x");
        assert_eq!(query["labelSelector"], "app=web,tier in (a)");
        assert_eq!(query["watch"], "0");
        assert_eq!(query["bad"], "%zz");
        assert_eq!(query["x"], "");
        assert!(flag(&pairs("follow&timestamps=true"), "follow"));
        assert!(flag(&pairs("follow&timestamps=true"), "timestamps"));
        assert!(!flag(&pairs("follow=false"), "follow"));
        assert_eq!(
            decode_segment("gpio%2Fbuttons%2Fkill+x"),
            "gpio/buttons/kill+x"
        );
        assert_eq!(decode_segment("100%"), "100%");
    }

    #[test]
    fn escaping_round_trips() {
        let selector = "app in (web, db),!canary";
        assert_eq!(map(&format!("s={}", escape(selector)))["s"], selector);
    }
}
