//! The messages of the WebSocket protocol: a client's request, and the gateway's answers
//! (see the [module docs](super) for the shapes).

use http::StatusCode;
use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tower_deepseek::core::chat::ApiError;

/// The field of a client's message that tags its request (stripped before it goes upstream).
pub(crate) const TAG_FIELD: &str = "id";

/// A request taken from a client's text message.
#[derive(Debug)]
pub(crate) struct ClientRequest {
    /// The client's tag, echoed in every answer (a JSON string or number).
    pub(crate) tag: Option<Value>,
    /// The chat-completion request body, without the tag.
    pub(crate) body: Vec<u8>,
}

/// A message the gateway refuses, with the error message that answers it.
#[derive(Debug)]
pub(crate) struct Refused {
    /// The error message (its text), tagged when the tag could be read.
    pub(crate) message: String,
}

/// Reads a client's text message: a JSON object (a chat-completion request body) with an
/// optional `id` (a string or a number).
pub(crate) fn parse(text: &str) -> Result<ClientRequest, Refused> {
    let refuse = |tag: Option<Value>, code: &str, message: &str| Refused {
        message: error(
            tag.as_ref(),
            &gateway_error("invalid_request_error", code, message),
            Some(StatusCode::BAD_REQUEST),
            None,
            None,
        ),
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        // serde_json's syntax errors name a line and column, never the text.
        Err(e) => {
            return Err(refuse(
                tag_of(text),
                "invalid_json",
                &format!(
                    "the message is not valid JSON ({e}); each text message is a chat-completion request, a JSON object"
                ),
            ));
        }
    };
    let Value::Object(mut map) = value else {
        return Err(refuse(
            None,
            "invalid_request",
            "each text message is a chat-completion request: a JSON object",
        ));
    };
    let tag = match map.remove(TAG_FIELD) {
        // Untagged: the body goes on as the client wrote it.
        None => {
            return Ok(ClientRequest {
                tag: None,
                body: text.as_bytes().to_vec(),
            });
        }
        Some(t @ (Value::String(_) | Value::Number(_))) => Some(t),
        Some(_) => {
            return Err(refuse(
                None,
                "invalid_id",
                "`id` tags the request and must be a string or a number",
            ));
        }
    };
    let body = serde_json::to_vec(&Value::Object(map)).expect("a JSON value serializes");
    Ok(ClientRequest { tag, body })
}

/// The tag of a message that is not read whole (it is not valid JSON, or the gateway is
/// shutting down): the `id` member of the object, if it comes before anything malformed.
pub(crate) fn tag_of(text: &str) -> Option<Value> {
    /// Reads the members of an object, keeping the value of `id`, up to the first error.
    struct Seek<'a>(&'a mut Option<Value>);

    impl<'de> DeserializeSeed<'de> for Seek<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Seek<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key == TAG_FIELD {
                    *self.0 = Some(map.next_value()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }

    let mut found = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = Seek(&mut found).deserialize(&mut de);
    found.filter(|t: &Value| t.is_string() || t.is_number())
}

/// One message of the gateway; absent fields are left out.
#[derive(Serialize, Default)]
struct Out<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

fn encode(out: &Out<'_>) -> String {
    serde_json::to_string(out).expect("the messages serialize")
}

/// `{"id":…,"chunk":{…chat.completion.chunk…}}`.
pub(crate) fn chunk(tag: Option<&Value>, chunk: &RawValue) -> String {
    encode(&Out {
        id: tag,
        chunk: Some(chunk),
        ..Out::default()
    })
}

/// `{"id":…,"completion":{…chat.completion…}}`.
pub(crate) fn completion(tag: Option<&Value>, completion: &RawValue) -> String {
    encode(&Out {
        id: tag,
        completion: Some(completion),
        ..Out::default()
    })
}

/// `{"id":…,"done":true,"request_id":…}`: the answer is whole.
pub(crate) fn done(tag: Option<&Value>, request_id: Option<&str>) -> String {
    encode(&Out {
        id: tag,
        done: true,
        request_id,
        ..Out::default()
    })
}

/// `{"id":…,"error":{…},"status":…,"retry_after":…,"request_id":…}`: the answer failed.
pub(crate) fn error(
    tag: Option<&Value>,
    error: &RawValue,
    status: Option<StatusCode>,
    retry_after: Option<u64>,
    request_id: Option<&str>,
) -> String {
    encode(&Out {
        id: tag,
        error: Some(error),
        status: status.map(|s| s.as_u16()),
        retry_after,
        request_id,
        ..Out::default()
    })
}

/// The inside of an OpenAI error made by the gateway: `{"message","type","param","code"}`.
pub(crate) fn gateway_error(kind: &str, code: &str, message: &str) -> Box<RawValue> {
    serde_json::value::to_raw_value(&ApiError::new(message, kind, code).error)
        .expect("an error body serializes")
}

/// The error object of an answer: the `error` member of `{"error":{…}}`, or `None` when the
/// answer is not an error.
pub(crate) fn error_member(json: &RawValue) -> Option<&RawValue> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        error: Option<&'a RawValue>,
    }
    serde_json::from_str::<Probe<'_>>(json.get())
        .ok()
        .and_then(|p| p.error)
        .filter(|e| e.get() != "null")
}

/// The JSON value of `bytes` (an event's data or a whole answer), when it is a JSON object.
pub(crate) fn json_object(bytes: &[u8]) -> Option<&RawValue> {
    let raw: &RawValue = serde_json::from_slice(bytes.trim_ascii()).ok()?;
    raw.get().starts_with('{').then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_stripped_and_the_rest_kept() {
        let r =
            parse(r#"{"id":"a1","model":"deepseek-chat","messages":[],"stream":true}"#).unwrap();
        assert_eq!(r.tag, Some(Value::from("a1")));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(body.get("id").is_none());
        assert_eq!(body["model"], "deepseek-chat");
        assert_eq!(body["stream"], true);

        let r = parse(r#"{"id":7,"messages":[]}"#).unwrap();
        assert_eq!(r.tag, Some(Value::from(7)));
        let text = r#"{ "messages": [], "temperature": 1e0 }"#;
        let r = parse(text).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.body, text.as_bytes());
    }

    #[test]
    fn malformed_messages_are_refused_with_an_error_message() {
        // The id is found when it comes before the fault.
        let e = parse("{\"id\":\"a\", \"messages\": [").unwrap_err();
        let v: Value = serde_json::from_str(&e.message).unwrap();
        assert_eq!(v["id"], "a");
        let e = parse("{\"messages\": [}, \"id\":\"a\"").unwrap_err();
        let v: Value = serde_json::from_str(&e.message).unwrap();
        assert!(v.get("id").is_none());
        assert_eq!(v["error"]["code"], "invalid_json");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["status"], 400);

        let e = parse("[1,2]").unwrap_err();
        let v: Value = serde_json::from_str(&e.message).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request");

        let e = parse(r#"{"id":{"x":1},"messages":[]}"#).unwrap_err();
        let v: Value = serde_json::from_str(&e.message).unwrap();
        assert_eq!(v["error"]["code"], "invalid_id");
    }

    #[test]
    fn a_syntax_error_never_repeats_the_text() {
        let e = parse("{\"messages\":[{\"content\":\"alice@example.com 13800138000").unwrap_err();
        assert!(!e.message.contains("alice"), "{}", e.message);
        assert!(!e.message.contains("13800138000"), "{}", e.message);
    }

    #[test]
    fn answers_are_tagged_and_carry_the_chunk_verbatim() {
        let tag = Value::from("q");
        let raw =
            json_object(br#" {"id":"chatcmpl-1","object":"chat.completion.chunk"} "#).unwrap();
        assert_eq!(
            chunk(Some(&tag), raw),
            r#"{"id":"q","chunk":{"id":"chatcmpl-1","object":"chat.completion.chunk"}}"#
        );
        assert_eq!(
            done(Some(&tag), Some("rid")),
            r#"{"id":"q","done":true,"request_id":"rid"}"#
        );
        assert_eq!(done(None, None), r#"{"done":true}"#);
        let e = gateway_error("api_error", "x", "m");
        let v: Value = serde_json::from_str(&error(
            Some(&tag),
            &e,
            Some(StatusCode::TOO_MANY_REQUESTS),
            Some(2),
            None,
        ))
        .unwrap();
        assert_eq!(v["id"], "q");
        assert_eq!(v["error"]["code"], "x");
        assert_eq!(v["status"], 429);
        assert_eq!(v["retry_after"], 2);
        assert!(json_object(b"[DONE]").is_none());
        assert!(json_object(b"[1]").is_none());
    }

    #[test]
    fn error_members_are_found() {
        let raw = json_object(br#"{"error":{"message":"m","code":"c"}}"#).unwrap();
        assert_eq!(
            error_member(raw).unwrap().get(),
            r#"{"message":"m","code":"c"}"#
        );
        let raw = json_object(br#"{"id":"c","choices":[]}"#).unwrap();
        assert!(error_member(raw).is_none());
        let raw = json_object(br#"{"error":null}"#).unwrap();
        assert!(error_member(raw).is_none());
        assert_eq!(tag_of(r#"{"id":"t","x":1}"#), Some(Value::from("t")));
        assert_eq!(tag_of("nope"), None);
        assert_eq!(tag_of(r#"{"id":[1],"x":1}"#), None);
        assert_eq!(
            tag_of(r#"{"a":{"id":"inner"},"id":3,"#),
            Some(Value::from(3))
        );
    }
}
