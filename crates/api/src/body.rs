//! Reading request bodies into typed values, with errors that name the field and what it accepts.
//! Every dialect maps these into its own error shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::{Map, Value};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest body of the routes that take an input image (AWS Lambda's own limit is 6 MB).
pub const MAX_IMAGE_BODY_BYTES: usize = 6 * 1024 * 1024;

/// A request the caller must fix. `field` is the JSON path (e.g. `options.num_images`), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub status: StatusCode,
    pub field: Option<String>,
    pub message: String,
}

impl InputError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        InputError { status: StatusCode::BAD_REQUEST, field: Some(field.to_owned()), message: message.into() }
    }

    pub fn body(status: StatusCode, message: impl Into<String>) -> Self {
        InputError { status, field: None, message: message.into() }
    }
}

/// The body as a JSON object.
pub fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, InputError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            InputError::body(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is too large: at most {MAX_BODY_BYTES} bytes, {MAX_IMAGE_BODY_BYTES} on the image routes"
                ),
            )
        } else {
            InputError::body(StatusCode::BAD_REQUEST, format!("request body could not be read: {rejection}"))
        }
    })?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| InputError::body(StatusCode::BAD_REQUEST, format!("request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(InputError::body(StatusCode::BAD_REQUEST, "request body must be a JSON object")),
    }
}

/// Typed access to one JSON object's fields; `prefix` makes error paths like `options.neg_text`.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Fields { map, prefix: "" }
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_owned() } else { format!("{}.{name}", self.prefix) }
    }

    /// A present, non-null value.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// A nested object (absent or null → `None`).
    pub fn object(&self, name: &'a str) -> Result<Option<Fields<'a>>, InputError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields { map, prefix: name })),
            Some(_) => Err(InputError::field(&self.path(name), format!("{} must be a JSON object", self.path(name)))),
        }
    }

    /// An optional string of at most `max_chars` characters.
    pub fn opt_string(&self, name: &str, max_chars: usize) -> Result<Option<String>, InputError> {
        let path = self.path(name);
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.chars().count() <= max_chars => Ok(Some(s.clone())),
            Some(Value::String(_)) => {
                Err(InputError::field(&path, format!("{path} is longer than {max_chars} characters")))
            }
            Some(_) => Err(InputError::field(&path, format!("{path} must be a string"))),
        }
    }

    /// A required string that is not blank.
    pub fn required_text(&self, name: &str, what: &str, max_chars: usize) -> Result<String, InputError> {
        let path = self.path(name);
        match self.opt_string(name, max_chars)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(InputError::field(&path, format!("{path} must not be empty: {what}"))),
            None => Err(InputError::field(&path, format!("{path} is required: {what}"))),
        }
    }

    /// An optional integer in `min..=max`. Floats with a fraction, strings and booleans are refused.
    pub fn opt_int(&self, name: &str, min: i64, max: u64) -> Result<Option<u64>, InputError> {
        let path = self.path(name);
        let Some(value) = self.get(name) else { return Ok(None) };
        let range = || format!("{path} must be an integer from {min} to {max}");
        let n = match value {
            Value::Number(n) => n
                .as_u64()
                .map(i128::from)
                .or_else(|| n.as_i64().map(i128::from))
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e18).map(|f| f as i128)),
            _ => None,
        };
        match n {
            Some(n) if n >= i128::from(min) && n <= i128::from(max) => Ok(Some(n as u64)),
            _ => Err(InputError::field(&path, range())),
        }
    }

    /// A required integer in `min..=max`.
    pub fn required_int(&self, name: &str, min: i64, max: u64) -> Result<u64, InputError> {
        let path = self.path(name);
        self.opt_int(name, min, max)?
            .ok_or_else(|| InputError::field(&path, format!("{path} is required: an integer from {min} to {max}")))
    }

    /// An optional number (integer or not) in `min..=max`.
    pub fn opt_number(&self, name: &str, min: f64, max: f64) -> Result<Option<f64>, InputError> {
        let path = self.path(name);
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_f64().is_some_and(|f| (min..=max).contains(&f)) => Ok(n.as_f64()),
            Some(_) => Err(InputError::field(&path, format!("{path} must be a number from {min} to {max}"))),
        }
    }

    /// An optional string that must be one of `allowed` (compared exactly); the error lists them.
    pub fn opt_enum(&self, name: &str, allowed: &[&str]) -> Result<Option<String>, InputError> {
        let path = self.path(name);
        match self.opt_string(name, 256)? {
            None => Ok(None),
            Some(s) if allowed.contains(&s.as_str()) => Ok(Some(s)),
            Some(s) => Err(InputError::field(&path, format!("{path} {s:?} is not one of {}", allowed.join(", ")))),
        }
    }

    /// The names present in the object that are not in `known` (for dialects that refuse them).
    pub fn unknown(&self, known: &[&str]) -> Vec<String> {
        self.map.keys().filter(|k| !known.contains(&k.as_str())).cloned().collect()
    }

    /// An optional absolute `http`/`https` URL.
    pub fn opt_http_url(&self, name: &str) -> Result<Option<String>, InputError> {
        let path = self.path(name);
        let Some(raw) = self.opt_string(name, 2048)? else { return Ok(None) };
        let err = || InputError::field(&path, format!("{path} must be an absolute http or https URL"));
        let url = url::Url::parse(raw.trim()).map_err(|_| err())?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(err());
        }
        Ok(Some(url.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn integers_are_checked_for_type_and_range_with_the_field_path_in_the_message() {
        let m = map(json!({"o": {"n": 3, "f": 2.0, "half": 2.5, "s": "3", "neg": -1, "big": 7, "b": true}}));
        let o = Fields::new(&m).object("o").unwrap().unwrap();
        assert_eq!(o.opt_int("n", 1, 6).unwrap(), Some(3));
        assert_eq!(o.opt_int("f", 1, 6).unwrap(), Some(2));
        assert_eq!(o.opt_int("missing", 1, 6).unwrap(), None);
        for bad in ["half", "s", "neg", "big", "b"] {
            let e = o.opt_int(bad, 1, 6).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(format!("o.{bad}").as_str()));
            assert!(e.message.contains("integer from 1 to 6"), "{}", e.message);
        }
    }

    #[test]
    fn urls_must_be_absolute_http_or_https() {
        let m = map(
            json!({"ok": "https://example.com/hook?x=1", "rel": "/hook", "ftp": "ftp://x/y", "word": "example_url", "num": 5}),
        );
        let f = Fields::new(&m);
        assert_eq!(f.opt_http_url("ok").unwrap().as_deref(), Some("https://example.com/hook?x=1"));
        for bad in ["rel", "ftp", "word", "num"] {
            assert_eq!(f.opt_http_url(bad).unwrap_err().field.as_deref(), Some(bad));
        }
    }

    #[test]
    fn numbers_and_enums_are_checked_and_their_errors_list_what_is_accepted() {
        let m = map(json!({"x": 7.5, "i": 3, "s": "7", "e": "b", "bad": "z"}));
        let f = Fields::new(&m);
        assert_eq!(f.opt_number("x", 0.0, 35.0).unwrap(), Some(7.5));
        assert_eq!(f.opt_number("i", 0.0, 35.0).unwrap(), Some(3.0));
        assert!(f.opt_number("x", 0.0, 5.0).unwrap_err().message.contains("from 0 to 5"));
        assert!(f.opt_number("s", 0.0, 35.0).is_err());
        assert_eq!(f.opt_enum("e", &["a", "b"]).unwrap().as_deref(), Some("b"));
        assert!(f.opt_enum("bad", &["a", "b"]).unwrap_err().message.contains("a, b"));
        assert!(f.required_int("missing", 1, 2).unwrap_err().message.contains("is required"));
        assert_eq!(f.unknown(&["x", "i", "s", "e"]), vec!["bad".to_owned()]);
    }

    #[test]
    fn blank_required_text_is_refused() {
        let m = map(json!({"a": "  ", "b": "x"}));
        let f = Fields::new(&m);
        assert!(f.required_text("a", "the prompt", 10).unwrap_err().message.contains("must not be empty"));
        assert!(f.required_text("c", "the prompt", 10).unwrap_err().message.contains("is required"));
        assert_eq!(f.required_text("b", "the prompt", 10).unwrap(), "x");
    }
}
