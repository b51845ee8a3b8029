//! The small pages the installing user sees. Every dynamic value is escaped;
//! no token or code is ever passed in.

/// Percent-encodes everything but RFC 3986's unreserved characters: safe
/// as a query component.
pub fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A link shown as a button under the page's text.
pub struct Link<'a> {
    pub label: &'a str,
    pub href: &'a str,
}

/// An accessible page: a language, a title, a main landmark, and a status
/// or alert region so screen readers announce the outcome; `link` (if any)
/// as a button after the text. The link carries no referrer: the page's own
/// URL may hold an authorization code.
pub fn page(
    title: &str,
    heading: &str,
    paragraphs: &[String],
    success: bool,
    link: Option<&Link>,
) -> String {
    let role = if success { "status" } else { "alert" };
    let accent = if success { "#1a7f37" } else { "#b42318" };
    let body: String = paragraphs
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| format!("<p>{}</p>", escape(p)))
        .collect();
    let link = link
        .map(|l| {
            format!(
                "<p><a class=\"button\" href=\"{}\" rel=\"noreferrer\">{}</a></p>",
                escape(l.href),
                escape(l.label)
            )
        })
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;line-height:1.5;color:#1f2328}}\
h1{{color:{accent};font-size:1.5rem}}\
a.button{{display:inline-block;margin-top:1rem;padding:.6rem 1.2rem;border-radius:6px;background:#155eef;color:#fff;text-decoration:none;font-weight:600}}\
a.button:focus-visible{{outline:3px solid #1f2328;outline-offset:2px}}</style></head>\
<body><main><div role=\"{role}\"><h1>{heading}</h1>{body}</div>{link}</main></body></html>\n",
        title = escape(title),
        heading = escape(heading),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        let p = page("t", "<script>", &["a & \"b\"".into()], false, None);
        assert!(p.contains("&lt;script&gt;"));
        assert!(p.contains("a &amp; &quot;b&quot;"));
        assert!(p.contains("role=\"alert\"") && p.contains("lang=\"en\""));
        assert!(!p.contains("<a "), "no link unless asked");
    }

    #[test]
    fn link_is_escaped_and_sends_no_referrer() {
        let p = page(
            "t",
            "h",
            &[],
            true,
            Some(&Link {
                label: "Back <home>",
                href: "https://x.example/?a=1&b=\"2\"",
            }),
        );
        assert!(
            p.contains(
                "<a class=\"button\" href=\"https://x.example/?a=1&amp;b=&quot;2&quot;\" rel=\"noreferrer\">Back &lt;home&gt;</a>"
            ),
            "{p}"
        );
    }
}
