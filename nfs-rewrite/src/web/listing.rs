//! Directory listings of a web origin: the links of an HTML index page (nginx's and lighttpd's
//! autoindex, Apache's, `python3 -m http.server`'s) as the entries of a directory, and names
//! turned into URL path segments and back.
//!
//! The page is read with `html5gum`, a WHATWG-conformant HTML tokenizer (the one the lychee
//! link checker uses): every `<a href>` start tag, with character references already decoded,
//! whatever the page's markup. A link is an entry when it names a direct child of the page:
//! one relative path segment (`name` or `name/`, which is a directory), not `.`/`..`, not a
//! query-only or fragment-only link (the sort links of Apache's index), not absolute.

use html5gum::{Token, Tokenizer};

/// One entry of a listing: a decoded name, and whether the link names a directory (`name/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: Vec<u8>,
    pub dir: bool,
}

/// The longest name an entry may have (NFS's NAME_MAX).
const NAME_MAX: usize = 255;

/// The entries an HTML index page lists, in page order, each name once.
pub fn links(html: &[u8]) -> Vec<Link> {
    let mut out: Vec<Link> = Vec::new();
    for token in Tokenizer::new(html).flatten() {
        let Token::StartTag(tag) = token else {
            continue;
        };
        if !tag.name.eq_ignore_ascii_case(b"a") {
            continue;
        }
        let Some(href) = tag
            .attributes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(b"href"))
            .map(|(_, v)| v.value.0.as_slice())
        else {
            continue;
        };
        if let Some(link) = entry(href) {
            if !out.iter().any(|l| l.name == link.name) {
                out.push(link);
            }
        }
    }
    out
}

/// The entry an `href` names, if it is a direct child of the page.
fn entry(href: &[u8]) -> Option<Link> {
    let href = trim(href);
    let end = href
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(href.len());
    let mut h = &href[..end];
    // "./name" is "name".
    while let Some(rest) = h.strip_prefix(b"./") {
        h = rest;
    }
    if h.is_empty() || h[0] == b'/' {
        return None;
    }
    // A scheme ("http:", "mailto:"): a colon before any slash.
    let first_slash = h.iter().position(|&b| b == b'/').unwrap_or(h.len());
    if h[..first_slash].contains(&b':') {
        return None;
    }
    let (seg, dir) = match h.strip_suffix(b"/") {
        Some(s) => (s, true),
        None => (h, false),
    };
    if seg.is_empty() || seg.contains(&b'/') {
        return None;
    }
    let name = percent_decode(seg)?;
    let bad = name.is_empty()
        || name == b"."
        || name == b".."
        || name.len() > NAME_MAX
        || name.iter().any(|&b| b == b'/' || b == 0);
    (!bad).then_some(Link { name, dir })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// `%XX` escapes decoded; None for a malformed escape.
pub fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hi = hex(*s.get(i + 1)?)?;
            let lo = hex(*s.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A name as one URL path segment: every byte but the unreserved ones (RFC 3986 §2.3)
/// percent-encoded.
pub fn percent_encode(name: &[u8], out: &mut String) {
    for &b in name {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(html: &str) -> Vec<(String, bool)> {
        links(html.as_bytes())
            .into_iter()
            .map(|l| (String::from_utf8(l.name).unwrap(), l.dir))
            .collect()
    }

    #[test]
    fn nginx_autoindex() {
        // As nginx 1.22 writes it (names escaped, long ones cut in the text, not the href).
        let page = "<html>\r\n<head><title>Index of /pub/</title></head>\r\n<body>\r\n\
            <h1>Index of /pub/</h1><hr><pre><a href=\"../\">../</a>\r\n\
            <a href=\"docs/\">docs/</a>                                              02-Dec-2026 10:00       -\r\n\
            <a href=\"a%20b.txt\">a b.txt</a>                                          02-Dec-2026 10:00      12\r\n\
            <a href=\"very-long-name-that-nginx-cuts-in-the-text-of-its-index.bin\">very-long-name-that-nginx-cuts-in-the-text-..&gt;</a> 02-Dec-2026 10:00   3145728\r\n\
            </pre><hr></body>\r\n</html>\r\n";
        assert_eq!(
            names(page),
            vec![
                ("docs".into(), true),
                ("a b.txt".into(), false),
                (
                    "very-long-name-that-nginx-cuts-in-the-text-of-its-index.bin".into(),
                    false
                ),
            ]
        );
    }

    #[test]
    fn python_and_apache_indexes() {
        // python3 -m http.server: quote()d names, entities in the text.
        let py = "<!DOCTYPE HTML>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
            <title>Directory listing for /</title></head><body><ul>\n\
            <li><a href=\"sub/\">sub/</a></li>\n<li><a href=\"x%26y.txt\">x&amp;y.txt</a></li>\n\
            <li><a href=\"caf%C3%A9\">café</a></li>\n</ul></body></html>";
        assert_eq!(
            names(py),
            vec![
                ("sub".into(), true),
                ("x&y.txt".into(), false),
                ("café".into(), false)
            ]
        );
        // Apache: sort links, the parent, an icon link, absolute and foreign links.
        let apache = "<table><tr><th><a href='?C=N;O=D'>Name</a></th><th><a href=\"?C=M;O=A\">\
            Last modified</a></th></tr><tr><td><a HREF=\"/pub/\">Parent Directory</a></td></tr>\
            <tr><td><a href=\"./f.tar.gz\">f.tar.gz</a></td></tr>\
            <tr><td><a href=\"http://example.org/\">x</a><a href=\"mailto:a@b\">m</a>\
            <a href=\"#top\">top</a><a href=\"deep/er/\">no</a><a href=\"f.tar.gz\">dup</a>\
            <a href=\"%2e%2e\">dots</a><a href=\"bad%zz\">bad</a><a href=\"%2F\">slash</a></td></tr>";
        assert_eq!(names(apache), vec![("f.tar.gz".into(), false)]);
    }

    #[test]
    fn segments_round_trip() {
        for name in [
            &b"plain.txt"[..],
            b"a b&c?d#e%f",
            "é/".as_bytes(),
            b"~x_y-z",
        ] {
            let mut s = String::new();
            percent_encode(name, &mut s);
            assert!(!s.contains('/') && !s.contains(' ') && !s.contains('?'));
            assert_eq!(percent_decode(s.as_bytes()).unwrap(), name);
        }
        assert_eq!(percent_decode(b"%4"), None);
        assert_eq!(percent_decode(b"%g0"), None);
    }
}
