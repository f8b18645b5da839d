//! Metric names and helpers (through the `metrics` facade; no exporter here).

/// `deepseek_cache_requests_total{result}`: requests by outcome
/// (`hit_l1`, `hit_l2`, `miss`, `bypass`).
pub const REQUESTS_TOTAL: &str = "deepseek_cache_requests_total";
/// `deepseek_cache_l1_bytes`: bytes held by L1 (gauge, weighed entries).
pub const L1_BYTES: &str = "deepseek_cache_l1_bytes";
/// `deepseek_cache_l1_entries`: entries held by L1 (gauge).
pub const L1_ENTRIES: &str = "deepseek_cache_l1_entries";
/// `deepseek_cache_evictions_total{cause}`: L1 entries removed for size (`size`) or age
/// (`expired`).
pub const EVICTIONS_TOTAL: &str = "deepseek_cache_evictions_total";
/// `deepseek_cache_redis_errors_total{op}`: failed or timed-out Redis operations
/// (`connect`, `get`, `set`); each one was served as a miss.
pub const REDIS_ERRORS_TOTAL: &str = "deepseek_cache_redis_errors_total";
/// `deepseek_cache_singleflight_merged_total`: requests that joined an identical request in
/// flight instead of going upstream.
pub const SINGLEFLIGHT_MERGED_TOTAL: &str = "deepseek_cache_singleflight_merged_total";
/// `deepseek_cache_exact_hits_total`: L1 hits found through the exact-request fast path (a
/// byte-identical repeat of a request already answered from L1: no JSON parse, no SHA-256).
pub const EXACT_HITS_TOTAL: &str = "deepseek_cache_exact_hits_total";
/// `deepseek_cache_stores_total{tier}`: answers stored (`l1`, `l2`).
pub const STORES_TOTAL: &str = "deepseek_cache_stores_total";

#[cfg(feature = "redis")]
pub(crate) fn redis_error(op: &'static str) {
    metrics::counter!(REDIS_ERRORS_TOTAL, "op" => op).increment(1);
}

pub(crate) fn request(result: &'static str) {
    metrics::counter!(REQUESTS_TOTAL, "result" => result).increment(1);
}

pub(crate) fn exact_hit() {
    metrics::counter!(EXACT_HITS_TOTAL).increment(1);
}

pub(crate) fn merged() {
    metrics::counter!(SINGLEFLIGHT_MERGED_TOTAL).increment(1);
}

pub(crate) fn stored(tier: &'static str) {
    metrics::counter!(STORES_TOTAL, "tier" => tier).increment(1);
}

pub(crate) fn eviction(cause: &'static str) {
    metrics::counter!(EVICTIONS_TOTAL, "cause" => cause).increment(1);
}

pub(crate) fn l1_size(bytes: u64, entries: u64) {
    metrics::gauge!(L1_BYTES).set(bytes as f64);
    metrics::gauge!(L1_ENTRIES).set(entries as f64);
}
