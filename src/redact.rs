//! The one way a URL leaves the process (logs, `/stats`, error messages): without its
//! password. `http://user:secret@host/v1` becomes `http://user:***@host/v1`.

/// `url` with any password replaced by `***`. A string that does not parse as a URL is
/// returned as `<unparsable URL>` unless it holds no `@` (then nothing can be secret in it).
pub fn url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) if !url.contains('@') => url.to_string(),
        Err(_) => "<unparsable URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_replaced() {
        assert_eq!(
            super::url("http://user:secret@host:8/v1"),
            "http://user:***@host:8/v1"
        );
        assert_eq!(
            super::url("redis://:pw@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(super::url("http://host/v1"), "http://host/v1");
        assert!(!super::url("not a url but:secret@x").contains("secret"));
    }
}
