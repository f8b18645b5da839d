//! [`Answer`]: what the model answered, assembled from a JSON body or from the SSE chunks as
//! they pass; [`ReviewOutcome`]: how much of it was seen.

use bytes::Bytes;
use serde::Serialize;
use tower_deepseek_core::chat::{ChatResponse, Content, Message, Usage};
use tower_deepseek_core::sse::SseParser;

/// How the answer of a reviewed call ended, as the review layer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReviewOutcome {
    /// A whole answer: a JSON completion, or a stream that ended with `data: [DONE]`.
    Complete,
    /// A stream that ended without `[DONE]`, or a JSON body cut short.
    Incomplete,
    /// The answer was longer than `max_body_bytes`: what was kept is in the record.
    TooLarge,
    /// The body was neither a chat completion nor an event stream (its text is kept).
    NotJson,
    /// An error status or an in-band error (its text is kept).
    Error,
    /// The call failed before an answer, or its body failed part way.
    Failed,
    /// The caller went away before the end.
    Cancelled,
}

impl ReviewOutcome {
    /// The outcome as written in the record (`complete`, `incomplete`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            ReviewOutcome::Complete => "complete",
            ReviewOutcome::Incomplete => "incomplete",
            ReviewOutcome::TooLarge => "too_large",
            ReviewOutcome::NotJson => "not_json",
            ReviewOutcome::Error => "error",
            ReviewOutcome::Failed => "failed",
            ReviewOutcome::Cancelled => "cancelled",
        }
    }
}

/// One tool call of an answer, its arguments joined from the streamed fragments.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AnsweredToolCall {
    /// The call's position.
    pub index: u32,
    /// The call id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The function name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The JSON-encoded arguments, as the model wrote them.
    pub arguments: String,
}

/// One choice of an answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AnsweredChoice {
    /// The choice's position.
    pub index: u32,
    /// The text (`content`, or FIM's `text`).
    pub content: String,
    /// Thinking-mode reasoning, when there was any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Tool calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<AnsweredToolCall>,
    /// Why generation stopped, as written on the wire (`stop`, `length`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// What the model answered: its choices and token usage. In a review record the text is the
/// answer as the layers below sent it: masked, with placeholders as placeholders.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Answer {
    /// The model that answered, as it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The choices, by index.
    pub choices: Vec<AnsweredChoice>,
    /// Token usage, when the answer reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl Answer {
    /// The first choice's text (empty when there is none).
    pub fn content(&self) -> &str {
        self.choices.first().map_or("", |c| c.content.as_str())
    }

    /// The first choice's finish reason.
    pub fn finish_reason(&self) -> Option<&str> {
        self.choices
            .first()
            .and_then(|c| c.finish_reason.as_deref())
    }

    fn choice(&mut self, index: u32) -> &mut AnsweredChoice {
        let pos = match self.choices.iter().position(|c| c.index == index) {
            Some(p) => p,
            None => {
                self.choices.push(AnsweredChoice {
                    index,
                    ..AnsweredChoice::default()
                });
                self.choices.len() - 1
            }
        };
        &mut self.choices[pos]
    }

    /// Adds one message (a whole one, or a streamed delta) to choice `index`; returns the
    /// bytes of text added.
    fn add(&mut self, index: u32, m: &Message, text: Option<&str>) -> usize {
        let c = self.choice(index);
        let mut n = 0;
        if let Some(content) = &m.content {
            let t = content_text(content);
            n += t.len();
            c.content.push_str(&t);
        }
        if let Some(t) = text {
            n += t.len();
            c.content.push_str(t);
        }
        if let Some(r) = &m.reasoning_content {
            n += r.len();
            c.reasoning_content
                .get_or_insert_with(String::new)
                .push_str(r);
        }
        for (i, tc) in m.tool_calls.iter().flatten().enumerate() {
            let idx = tc.index.unwrap_or(i as u32);
            let pos = match c.tool_calls.iter().position(|t| t.index == idx) {
                Some(p) => p,
                None => {
                    c.tool_calls.push(AnsweredToolCall {
                        index: idx,
                        ..AnsweredToolCall::default()
                    });
                    c.tool_calls.len() - 1
                }
            };
            let t = &mut c.tool_calls[pos];
            if tc.id.is_some() {
                t.id.clone_from(&tc.id);
            }
            if tc.function.name.is_some() {
                t.name.clone_from(&tc.function.name);
            }
            if let Some(a) = &tc.function.arguments {
                n += a.len();
                t.arguments.push_str(a);
            }
        }
        n
    }

    /// Adds a completion or a chunk; returns the bytes of text added.
    fn add_response(&mut self, r: ChatResponse) -> usize {
        if !r.model.is_empty() {
            self.model = Some(r.model);
        }
        if r.usage.is_some() {
            self.usage = r.usage;
        }
        let mut n = 0;
        for ch in r.choices {
            let empty = Message::default();
            let m = ch.message.as_ref().or(ch.delta.as_ref()).unwrap_or(&empty);
            n += self.add(ch.index, m, ch.text.as_deref());
            if let Some(f) = ch.finish_reason {
                self.choice(ch.index).finish_reason = Some(f.as_str().to_owned());
            }
        }
        n
    }
}

fn content_text(c: &Content) -> std::borrow::Cow<'_, str> {
    c.text()
}

/// Assembles an answer as its frames pass. Never fails, never holds a frame back.
pub(super) struct Assembler {
    kind: Kind,
    limit: usize,
    kept: usize,
    over: bool,
    answer: Answer,
    /// The raw text of an error or of a body that was not understood.
    text: Option<String>,
    error_status: bool,
}

enum Kind {
    Sse {
        parser: SseParser,
        done: bool,
        in_band_error: bool,
        broken: bool,
    },
    Json {
        chunks: Vec<Bytes>,
    },
}

impl Assembler {
    pub(super) fn new(event_stream: bool, error_status: bool, limit: usize) -> Self {
        let kind = if event_stream && !error_status {
            Kind::Sse {
                parser: SseParser::new(),
                done: false,
                in_band_error: false,
                broken: false,
            }
        } else {
            Kind::Json { chunks: Vec::new() }
        };
        Self {
            kind,
            limit,
            kept: 0,
            over: false,
            answer: Answer::default(),
            text: None,
            error_status,
        }
    }

    pub(super) fn on_data(&mut self, chunk: &Bytes) {
        if self.over {
            return;
        }
        match &mut self.kind {
            Kind::Json { chunks } => {
                if self.kept + chunk.len() > self.limit {
                    self.over = true;
                    let rest = self.limit - self.kept;
                    chunks.push(chunk.slice(..rest));
                    self.kept = self.limit;
                } else {
                    self.kept += chunk.len();
                    chunks.push(chunk.clone());
                }
            }
            Kind::Sse {
                parser,
                done,
                in_band_error,
                broken,
            } => {
                let answer = &mut self.answer;
                let text = &mut self.text;
                let kept = &mut self.kept;
                let res = parser.push(chunk, |ev| {
                    if ev.is_done() {
                        *done = true;
                        return;
                    }
                    match serde_json::from_slice::<ChatResponse>(ev.data()) {
                        Ok(r) if r.extra.contains_key("error") => {
                            *in_band_error = true;
                            *text = Some(String::from_utf8_lossy(ev.data()).into_owned());
                        }
                        Ok(r) => *kept += answer.add_response(r),
                        Err(_) => *broken = true,
                    }
                });
                if res.is_err() {
                    *broken = true;
                }
                if self.kept > self.limit {
                    self.over = true;
                }
            }
        }
    }

    /// The answer and how it ended; `complete`: the body reached its end.
    pub(super) fn finish(self, complete: bool) -> (Answer, Option<String>, ReviewOutcome) {
        let Assembler {
            kind,
            limit,
            over,
            mut answer,
            mut text,
            error_status,
            ..
        } = self;
        let outcome = match kind {
            Kind::Sse {
                done,
                in_band_error,
                broken,
                ..
            } => {
                if in_band_error {
                    ReviewOutcome::Error
                } else if over {
                    ReviewOutcome::TooLarge
                } else if done && !broken {
                    ReviewOutcome::Complete
                } else {
                    ReviewOutcome::Incomplete
                }
            }
            Kind::Json { chunks } => {
                let mut body = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
                for c in &chunks {
                    body.extend_from_slice(c);
                }
                let trimmed = body.trim_ascii_start();
                if error_status {
                    text = Some(String::from_utf8_lossy(&body).into_owned());
                    ReviewOutcome::Error
                } else if over {
                    text = Some(String::from_utf8_lossy(&body).into_owned());
                    ReviewOutcome::TooLarge
                } else if trimmed.starts_with(b"data:") || trimmed.starts_with(b":") {
                    // A stream labelled as something else: read it as one.
                    let mut a = Assembler::new(true, false, limit);
                    a.on_data(&Bytes::from(body));
                    return a.finish(complete);
                } else {
                    match serde_json::from_slice::<ChatResponse>(&body) {
                        Ok(r) if r.extra.contains_key("error") => {
                            text = Some(String::from_utf8_lossy(&body).into_owned());
                            ReviewOutcome::Error
                        }
                        Ok(r) if !r.choices.is_empty() => {
                            answer.add_response(r);
                            ReviewOutcome::Complete
                        }
                        Ok(_) => {
                            text = Some(String::from_utf8_lossy(&body).into_owned());
                            ReviewOutcome::NotJson
                        }
                        Err(e) if e.is_eof() => {
                            text = Some(String::from_utf8_lossy(&body).into_owned());
                            ReviewOutcome::Incomplete
                        }
                        Err(_) => {
                            text = Some(String::from_utf8_lossy(&body).into_owned());
                            ReviewOutcome::NotJson
                        }
                    }
                }
            }
        };
        let outcome = if complete || outcome != ReviewOutcome::Complete {
            outcome
        } else {
            ReviewOutcome::Incomplete
        };
        (answer, text, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(event_stream: bool, chunks: &[&str]) -> (Answer, Option<String>, ReviewOutcome) {
        let mut a = Assembler::new(event_stream, false, 1 << 20);
        for c in chunks {
            a.on_data(&Bytes::from(c.to_string()));
        }
        a.finish(true)
    }

    #[test]
    fn stream_is_assembled_across_split_chunks() {
        let chunks = [
            "data: {\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"reasoning_content\":\"think\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\nda",
            "ta: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo <EMAIL_1>\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\ndata: [DONE]\n\n",
        ];
        let (a, text, o) = run(true, &chunks);
        assert_eq!(o, ReviewOutcome::Complete);
        assert!(text.is_none());
        assert_eq!(a.model.as_deref(), Some("deepseek-chat"));
        let c = &a.choices[0];
        assert_eq!(c.content, "Hello <EMAIL_1>");
        assert_eq!(c.reasoning_content.as_deref(), Some("think"));
        assert_eq!(c.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(c.tool_calls[0].name.as_deref(), Some("f"));
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert_eq!(a.usage.unwrap().completion_tokens, 4);
    }

    #[test]
    fn stream_without_done_is_incomplete_and_garbage_never_panics() {
        let (_, _, o) = run(
            true,
            &["data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n"],
        );
        assert_eq!(o, ReviewOutcome::Incomplete);
        let (_, _, o) = run(true, &["data: {not json\n\ndata: [DONE]\n\n"]);
        assert_eq!(o, ReviewOutcome::Incomplete);
        let (_, text, o) = run(true, &["data: {\"error\":{\"message\":\"m\"}}\n\n"]);
        assert_eq!(o, ReviewOutcome::Error);
        assert!(text.unwrap().contains("error"));
    }

    #[test]
    fn json_answers_not_json_truncated_and_mislabelled() {
        let (a, _, o) = run(
            false,
            &[
                "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":\"length\"}]}",
            ],
        );
        assert_eq!(o, ReviewOutcome::Complete);
        assert_eq!(a.content(), "hi");
        assert_eq!(a.finish_reason(), Some("length"));
        let (_, text, o) = run(false, &["<html>oops</html>"]);
        assert_eq!(
            (o, text.as_deref()),
            (ReviewOutcome::NotJson, Some("<html>oops</html>"))
        );
        let (_, _, o) = run(false, &["{\"choices\":[{\"index\":0,"]);
        assert_eq!(o, ReviewOutcome::Incomplete);
        let (a, _, o) = run(
            false,
            &[
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"s\"}}]}\n\ndata: [DONE]\n\n",
            ],
        );
        assert_eq!((o, a.content()), (ReviewOutcome::Complete, "s"));
        let mut big = Assembler::new(false, false, 4);
        big.on_data(&Bytes::from_static(b"{\"choices\":[]}"));
        assert_eq!(big.finish(true).2, ReviewOutcome::TooLarge);
        let mut cut = Assembler::new(false, false, 100);
        cut.on_data(&Bytes::from_static(
            b"{\"choices\":[{\"index\":0,\"message\":{}}]}",
        ));
        assert_eq!(cut.finish(false).2, ReviewOutcome::Incomplete);
    }
}
