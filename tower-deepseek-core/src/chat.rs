//! Typed views of DeepSeek (and OpenAI-compatible) chat requests and responses.
//!
//! These types name the fields that layers read: model, messages, sampling parameters, streaming
//! options, tools, thinking mode, `usage`, `finish_reason`. Every struct keeps the fields it does
//! not know in an `extra` map, so a request that is parsed and written back loses nothing when
//! the API grows (DeepSeek adds fields often; never hard-code a model list).
//!
//! Layers that must keep the request **byte-identical** (redaction, which may not reorder keys)
//! edit the raw bytes instead; these views are for reading.
//!
//! ```
//! use tower_deepseek_core::chat::{ChatRequest, Role};
//!
//! let req: ChatRequest = serde_json::from_slice(br#"{
//!     "model": "deepseek-chat",
//!     "messages": [{"role": "system", "content": "Be brief."},
//!                  {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
//!     "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
//!     "some_future_field": {"x": 1}
//! }"#).unwrap();
//! assert_eq!(req.messages[0].role, Role::System);
//! assert!(req.is_stream() && req.includes_usage());
//! assert!(req.extra.contains_key("some_future_field"));
//! ```

use std::fmt;

use serde::de::Deserializer;
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Fields a struct does not name, kept as they came.
pub type Extra = Map<String, Value>;

/// A chat completion request (`POST /chat/completions`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model name, as the caller wrote it.
    #[serde(default)]
    pub model: String,
    /// The conversation.
    #[serde(default)]
    pub messages: Vec<Message>,
    /// Sampling temperature (0 to 2; the API's default is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Upper bound on generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Stop sequences: a string or up to 16 strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    /// -2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// -2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// `{"type":"text"}` or `{"type":"json_object"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Whether the answer is streamed as SSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Tool (function) definitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `"none"`, `"auto"`, `"required"` or a named function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Thinking mode switch: `{"type":"enabled"}` or `{"type":"disabled"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Thinking>,
    /// Reasoning effort for thinking models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// Whether to return log probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// How many top log probabilities per token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// Sampling seed, where supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// DeepSeek's end-user id (`[A-Za-z0-9_-]+`, no personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatRequest {
    /// Whether the caller asked for an SSE stream.
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// Whether a streamed answer will end with a `usage` chunk.
    pub fn includes_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Whether thinking mode is on: requested explicitly, or implied by a reasoner model name.
    pub fn is_thinking(&self) -> bool {
        match &self.thinking {
            Some(t) => t.kind == "enabled",
            None => self.model.contains("reasoner"),
        }
    }

    /// The text of every message (string content and text parts), for size estimates.
    pub fn text_len(&self) -> usize {
        self.messages.iter().map(Message::text_len).sum()
    }
}

impl fmt::Debug for ChatRequest {
    // Requests carry prompts: never print message contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatRequest")
            .field("model", &self.model)
            .field("messages", &self.messages.len())
            .field("stream", &self.stream)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Ask for a final chunk with `usage` for the whole request (and empty `choices`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `thinking`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Thinking {
    /// `"enabled"` or `"disabled"`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A tool definition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// `"function"`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The function's name, description and JSON-schema parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<Value>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The role of a message. Unknown roles are kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Role {
    /// `system`
    System,
    /// `user`
    #[default]
    User,
    /// `assistant`
    Assistant,
    /// `tool`
    Tool,
    /// Any other role.
    Other(String),
}

impl Role {
    /// The role as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Other(s) => s,
        }
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(match &*s {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => Role::Other(other.to_owned()),
        })
    }
}

/// One message of the conversation (also used for a streamed `delta`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it. Missing in most streamed deltas.
    #[serde(default)]
    pub role: Role,
    /// A string, a list of parts, or null (an assistant turn with only tool calls).
    ///
    /// Always written, as `null` when `None`: DeepSeek and OpenAI expect the key on assistant
    /// turns with tool calls, and `null` is how they write an absent content.
    #[serde(default)]
    pub content: Option<Content>,
    /// Optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Thinking-mode reasoning. Must be passed back byte-stable in later turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Tool calls made by an assistant turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Which call a `tool` turn answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Chat prefix completion (beta): the model continues this assistant turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<bool>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message {
    /// Length in bytes of the text this message carries (content, text parts, tool arguments).
    pub fn text_len(&self) -> usize {
        let content = match &self.content {
            Some(Content::Text(s)) => s.len(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| p.text.as_ref().map_or(0, String::len))
                .sum(),
            None => 0,
        };
        let tools: usize = self
            .tool_calls
            .iter()
            .flatten()
            .map(|c| c.function.arguments.as_ref().map_or(0, String::len))
            .sum();
        content + tools + self.reasoning_content.as_ref().map_or(0, String::len)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("role", &self.role)
            .field("text_len", &self.text_len())
            .field("tool_calls", &self.tool_calls.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// Message content: a plain string or a list of typed parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// `"content": "..."`
    Text(String),
    /// `"content": [{"type":"text","text":"..."}, ...]`
    Parts(Vec<ContentPart>),
}

impl Content {
    /// The text of the content: the string, or the text parts joined without separator.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Content::Text(s) => s.as_str().into(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<String>()
                .into(),
        }
    }
}

/// One part of a multi-part content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    /// `"text"`, or another part type.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The text of a text part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A tool call (in a message, or a fragment of one in a streamed delta).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Position of the call, in streamed deltas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// The call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `"function"`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The function called.
    #[serde(default)]
    pub function: FunctionCall,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The function part of a tool call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// JSON-encoded arguments (a fragment of them, in streamed deltas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FinishReason {
    /// Natural end or a stop sequence.
    Stop,
    /// `max_tokens` or the context limit was reached.
    Length,
    /// The output was filtered.
    ContentFilter,
    /// The model called tools.
    ToolCalls,
    /// DeepSeek cut inference short for lack of resources: a transient failure.
    InsufficientSystemResource,
    /// Any other reason, as written.
    Other(String),
}

impl FinishReason {
    /// The reason as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::InsufficientSystemResource => "insufficient_system_resource",
            FinishReason::Other(s) => s,
        }
    }

    pub(crate) fn from_wire(s: &str) -> Self {
        match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "content_filter" => FinishReason::ContentFilter,
            "tool_calls" => FinishReason::ToolCalls,
            "insufficient_system_resource" => FinishReason::InsufficientSystemResource,
            other => FinishReason::Other(other.to_owned()),
        }
    }
}

impl Serialize for FinishReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FinishReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(FinishReason::from_wire(&s))
    }
}

/// Token accounting of a request, as DeepSeek reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens (reasoning included).
    #[serde(default)]
    pub completion_tokens: u64,
    /// prompt + completion.
    #[serde(default)]
    pub total_tokens: u64,
    /// Input tokens served from DeepSeek's prefix cache (cheaper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_hit_tokens: Option<u64>,
    /// Input tokens not served from the cache. hit + miss = prompt_tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_miss_tokens: Option<u64>,
    /// OpenAI-style prompt details (`cached_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// OpenAI-style completion details (`reasoning_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Usage {
    /// Input tokens served from the provider's cache, whichever field reported them.
    pub fn cache_hit_tokens(&self) -> u64 {
        self.prompt_cache_hit_tokens
            .or_else(|| {
                self.prompt_tokens_details
                    .as_ref()
                    .and_then(|d| d.cached_tokens)
            })
            .unwrap_or(0)
    }

    /// Input tokens not served from the cache.
    pub fn cache_miss_tokens(&self) -> u64 {
        self.prompt_cache_miss_tokens
            .unwrap_or_else(|| self.prompt_tokens.saturating_sub(self.cache_hit_tokens()))
    }

    /// Reasoning tokens among the completion tokens.
    pub fn reasoning_tokens(&self) -> u64 {
        self.completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0)
    }

    /// Reads `usage` from a complete JSON response body (leading whitespace, as DeepSeek's
    /// keep-alive blank lines, is fine). `None` when the body has no usage or is not JSON.
    pub fn from_json(body: &[u8]) -> Option<Usage> {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default)]
            usage: Option<Usage>,
        }
        serde_json::from_slice::<Probe>(body).ok()?.usage
    }
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Cached input tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    /// Reasoning tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A chat completion, or one streamed chunk of it (`object` tells which).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Completion id.
    #[serde(default)]
    pub id: String,
    /// `chat.completion` or `chat.completion.chunk`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered (record it: names and checkpoints change).
    #[serde(default)]
    pub model: String,
    /// Backend configuration fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// The choices (empty in the final usage chunk of a stream).
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Token accounting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One streamed chunk: the same shape as a completion, with `delta` instead of `message`.
pub type ChatChunk = ChatResponse;

impl fmt::Debug for ChatResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatResponse")
            .field("id", &self.id)
            .field("object", &self.object)
            .field("model", &self.model)
            .field("choices", &self.choices.len())
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

/// One choice of a completion or chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Position.
    #[serde(default)]
    pub index: u32,
    /// The full message (non-streaming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// The increment (streaming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Message>,
    /// FIM completions answer in `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Log probabilities, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    /// Why generation stopped (null until the last chunk of a stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

/// DeepSeek's error body: `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// The error.
    pub error: ApiErrorBody,
}

/// The inside of [`ApiError`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// Error type, e.g. `authentication_error`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The parameter at fault.
    #[serde(default)]
    pub param: Option<Value>,
    /// Error code (a string or a number, depending on the provider).
    #[serde(default)]
    pub code: Option<Value>,
    /// Everything else, untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ApiError {
    /// An OpenAI-style error body.
    pub fn new(message: impl Into<String>, kind: &str, code: &str) -> Self {
        Self {
            error: ApiErrorBody {
                message: message.into(),
                kind: Some(kind.to_owned()),
                param: None,
                code: Some(Value::String(code.to_owned())),
                extra: Extra::new(),
            },
        }
    }

    /// The JSON bytes of this error.
    pub fn to_bytes(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("error bodies always serialize")
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = r#"{"model":"deepseek-v4-pro","messages":[
        {"role":"system","content":"sys"},
        {"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}}]},
        {"role":"assistant","content":null,"reasoning_content":"think","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"q\":1}"}}]},
        {"role":"tool","tool_call_id":"c1","content":"42"},
        {"role":"developer","content":"x"}],
      "thinking":{"type":"enabled"},"reasoning_effort":"high","tools":[{"type":"function","function":{"name":"f"}}],
      "tool_choice":"auto","response_format":{"type":"json_object"},"stop":["a","b"],"user_id":"u_1",
      "unknown_top":{"nested":[1,2]}}"#;

    #[test]
    fn request_round_trips_without_loss() {
        let req: ChatRequest = serde_json::from_str(REQ).unwrap();
        assert_eq!(req.messages.len(), 5);
        assert_eq!(req.messages[4].role, Role::Other("developer".into()));
        assert!(req.is_thinking());
        let back: Value = serde_json::to_value(&req).unwrap();
        let orig: Value = serde_json::from_str(REQ).unwrap();
        assert_eq!(back, orig, "every field, known or not, survives");
        // the image part's unknown field survives inside the part
        let Some(Content::Parts(parts)) = &req.messages[1].content else {
            panic!()
        };
        assert!(parts[1].extra.contains_key("image_url"));
    }

    #[test]
    fn debug_never_prints_content() {
        let req: ChatRequest = serde_json::from_str(REQ).unwrap();
        let dbg = format!("{req:?} {:?}", req.messages);
        assert!(!dbg.contains("think") && !dbg.contains("sys\""));
    }

    #[test]
    fn usage_fields_and_extraction() {
        let body = b"\n\n{\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15,\
            \"prompt_cache_hit_tokens\":4,\"prompt_cache_miss_tokens\":6,\
            \"completion_tokens_details\":{\"reasoning_tokens\":3}}}";
        let u = Usage::from_json(body).unwrap();
        assert_eq!((u.cache_hit_tokens(), u.cache_miss_tokens()), (4, 6));
        assert_eq!(u.reasoning_tokens(), 3);
        let openai = Usage::from_json(
            br#"{"usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":7}}}"#,
        )
        .unwrap();
        assert_eq!(
            (openai.cache_hit_tokens(), openai.cache_miss_tokens()),
            (7, 3)
        );
        assert!(Usage::from_json(b"not json").is_none());
    }

    #[test]
    fn finish_reasons_parse() {
        let r: ChatResponse = serde_json::from_str(
            r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[
            {"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"insufficient_system_resource"},
            {"index":1,"delta":{"content":"x"},"finish_reason":null},
            {"index":2,"finish_reason":"brand_new"}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.choices[0].finish_reason,
            Some(FinishReason::InsufficientSystemResource)
        );
        assert_eq!(r.choices[1].finish_reason, None);
        assert_eq!(
            r.choices[2].finish_reason,
            Some(FinishReason::Other("brand_new".into()))
        );
    }

    #[test]
    fn api_error_shape() {
        let e = ApiError::new(
            "Insufficient Balance",
            "unknown_error",
            "invalid_request_error",
        );
        let v: Value = serde_json::from_slice(&e.to_bytes()).unwrap();
        assert_eq!(v["error"]["message"], "Insufficient Balance");
        assert_eq!(v["error"]["type"], "unknown_error");
        assert!(v["error"]["param"].is_null());
    }
}
