//! Status-aware retries driven by the shared classifier, safe for streams: [`RetryLayer`](crate::RetryLayer)
//! (its docs hold the schedule table, the worst cases, stream safety and body replay).

mod attempts;
mod body;
mod budget;
mod config;
mod error;
mod future;
mod layer;
mod schedule;
mod service;

pub use attempts::Attempts;
pub use body::ResponseBody;
pub use config::{BudgetConfig, RetryConfig};
pub use error::{RetriesExhausted, StopReason};
pub use future::ResponseFuture;
pub use layer::{RetryLayer, RetryLayerBuilder};
pub use schedule::{Backoff, Jitter, RetryAfterPolicy, Schedule, Schedules};
pub use service::Retry;
