//! URLs as the config judges and shows them: the scheme check (`https`, or `http` to a
//! loopback host or when allowed) and a URL fit for messages. It parses nothing and reads nothing.

use url::Url;

/// `https` always; `http` only to a loopback host or with `allow_insecure_http`.
pub(crate) fn check_url_scheme(url: &Url, allow_insecure_http: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(url) => Ok(()),
        "http" => Err(format!(
            "expected an https URL (plain http is allowed only for loopback hosts, or with \
             allow_insecure_http = true), found {url}"
        )),
        other => Err(format!("expected an https URL, found scheme {other:?}")),
    }
}

/// A URL fit for messages: no user info, query or fragment.
pub(crate) fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use url::Url;

    use super::*;

    #[test]
    fn plain_http_is_allowed_for_loopback_or_when_asked() {
        for url in [
            "http://127.0.0.1:1/t",
            "http://localhost/t",
            "http://[::1]:8/t",
        ] {
            assert!(
                check_url_scheme(&Url::parse(url).expect("url"), false).is_ok(),
                "{url}"
            );
        }
        let remote = Url::parse("http://idp.example.com/t").expect("url");
        assert!(check_url_scheme(&remote, false).is_err());
        assert!(check_url_scheme(&remote, true).is_ok());
        let ftp = Url::parse("ftp://idp.example.com/t").expect("url");
        assert!(check_url_scheme(&ftp, true).is_err());
    }

    #[test]
    fn urls_in_messages_lose_credentials_and_queries() {
        let url = Url::parse("https://u:p@idp.example.com/token?key=abc#x").expect("url");
        assert_eq!(display_url(&url), "https://idp.example.com/token");
    }
}
