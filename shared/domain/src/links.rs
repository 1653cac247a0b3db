//! The addresses of a task and an artifact in the API, for `Location` headers, views
//! and webhook payloads: formatted here and nowhere else.

use std::fmt::Display;

/// `{public_url}/v1/tasks/{id}`.
pub fn task_url(public_url: &str, id: impl Display) -> String {
    format!("{}/v1/tasks/{id}", public_url.trim_end_matches('/'))
}

/// `{public_url}/v1/artifacts/{id}`: the download.
pub fn artifact_url(public_url: &str, id: impl Display) -> String {
    format!("{}/v1/artifacts/{id}", public_url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_slash_on_the_public_url_is_not_doubled() {
        assert_eq!(
            task_url("http://api:8080/", "t1"),
            "http://api:8080/v1/tasks/t1"
        );
        assert_eq!(
            artifact_url("https://ops.example", "a1"),
            "https://ops.example/v1/artifacts/a1"
        );
    }
}
