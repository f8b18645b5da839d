//! [`RecentCalls`]: the recent-call index of feedback (request id → tenant and model), bounded
//! in entries and in time.
//!
//! Every call enters it, sampled or not, so its insert is on every call's path. It is a
//! sharded map of two generations per shard: an entry goes into the current generation; a
//! shard's current generation becomes its previous one (the previous one is dropped) when it
//! holds half the shard's share of the capacity or is older than the time to live. A lookup
//! reads both generations and checks the entry's own insert time, so the time to live is
//! exact; a shard never holds more than its share of the capacity. Eviction is by age: a
//! rotation drops the shard's oldest generation, and the index keeps at least the newest half
//! of each shard's share. Dropped generations give their table back to the next one (no
//! reallocation in the steady state); the entries of a dropped generation (at most half
//! a shard's share) are freed under the shard's lock, by the call that rotates it. The id
//! is hashed once per insert or lookup (keyed SipHash); that hash picks the shard and keys
//! the maps.
//!
//! A general cache (moka) did the same at several times the cost: an allocation per entry
//! for its own bookkeeping, a write log, its eviction and admission policy run on the
//! caller's thread every 64 writes, and an admission policy that may refuse a new entry over
//! an old one (see BENCHMARKS.md).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::handle::CallEntry;

/// Below this capacity the index is one shard (so the bound stays close to the capacity).
const SHARDED_FROM: usize = 1024;
/// The shards of a large index: enough that concurrent callers rarely meet on one lock.
const SHARDS: usize = 16;

/// The recent-call index. See the [module docs](self).
pub(super) struct RecentCalls {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    ttl: Duration,
    /// Entries a generation of one shard may hold before it rotates.
    generation_limit: usize,
    /// Whether a shard keeps its previous generation (not with a share of one entry).
    keep_previous: bool,
}

struct Slot {
    id: Box<str>,
    at: Instant,
    entry: CallEntry,
}

/// The maps are keyed by the id's hash, computed once per call with the index's keyed
/// SipHash (callers choose their ids, so the hash must not be predictable); the slot keeps
/// the id, and a lookup compares it. Two live ids with one 64-bit hash in one shard (about
/// one chance in 10^10 over 100 000 entries) would leave the second unremembered.
type Generation = HashMap<u64, Slot, BuildHasherDefault<Prehashed>>;

/// Passes a hash through.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used: a `u64` key hashes through `write_u64`.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Shard {
    current: Generation,
    previous: Generation,
    /// When the current generation started.
    since: Instant,
}

impl RecentCalls {
    /// An index of at most `capacity` calls (at least 1), each kept for `ttl`.
    pub(super) fn new(capacity: u64, ttl: Duration) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        let shards = if capacity >= SHARDED_FROM { SHARDS } else { 1 };
        let share = capacity / shards;
        let now = Instant::now();
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        current: Generation::default(),
                        previous: Generation::default(),
                        since: now,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            ttl,
            generation_limit: (share / 2).max(1),
            keep_previous: share >= 2,
        }
    }

    /// The id's hash, and its shard (chosen by bits the map's table does not use).
    fn locate(&self, id: &str) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash_one(id);
        (
            hash,
            &self.shards[(hash >> 32) as usize % self.shards.len()],
        )
    }

    /// Remembers a call, unless a live call already has this id (the first call with an id
    /// owns it).
    pub(super) fn insert_if_absent(&self, id: &str, entry: impl FnOnce() -> CallEntry) {
        self.insert_if_absent_at(id, entry, Instant::now());
    }

    fn insert_if_absent_at(&self, id: &str, entry: impl FnOnce() -> CallEntry, now: Instant) {
        let ttl = self.ttl;
        let live = |s: &Slot| now.saturating_duration_since(s.at) < ttl;
        let (hash, shard) = self.locate(id);
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        if shard
            .previous
            .get(&hash)
            .is_some_and(|s| live(s) && *s.id == *id)
        {
            return;
        }
        if let Some(slot) = shard.current.get(&hash) {
            // This id's, or (a hash collision) another live id's: kept while live.
            if live(slot) {
                return;
            }
            // Expired: inserted anew below, so that every entry of the current generation is
            // younger than its start plus the time to live.
            shard.current.remove(&hash);
        }
        let age = now.saturating_duration_since(shard.since);
        if shard.current.len() >= self.generation_limit || age >= ttl {
            // Every entry of the previous generation is older than the current one's start;
            // past two lifetimes the current one is all expired too.
            std::mem::swap(&mut shard.current, &mut shard.previous);
            shard.current.clear();
            if !self.keep_previous || age >= ttl.saturating_mul(2) {
                shard.previous.clear();
            }
            shard.since = now;
        }
        shard.current.insert(
            hash,
            Slot {
                id: id.into(),
                at: now,
                entry: entry(),
            },
        );
    }

    /// The live call with this id.
    pub(super) fn get(&self, id: &str) -> Option<CallEntry> {
        self.get_at(id, Instant::now())
    }

    fn get_at(&self, id: &str, now: Instant) -> Option<CallEntry> {
        let (hash, shard) = self.locate(id);
        let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        [&shard.current, &shard.previous]
            .into_iter()
            .filter_map(|g| g.get(&hash))
            .find(|s| *s.id == *id && now.saturating_duration_since(s.at) < self.ttl)
            .map(|s| s.entry.clone())
    }

    /// The calls held, live or expired but not yet dropped.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.current.len() + s.previous.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tower_deepseek_core::protocol::TenantId;

    fn call(tenant: &str) -> CallEntry {
        CallEntry {
            tenant: Some(TenantId::new(tenant)),
            model: None,
        }
    }

    fn tenant_of(r: &RecentCalls, id: &str, now: Instant) -> Option<String> {
        r.get_at(id, now)
            .and_then(|e| e.tenant)
            .map(|t| t.as_str().to_owned())
    }

    #[test]
    fn an_entry_lives_exactly_its_ttl() {
        let ttl = Duration::from_secs(60);
        let r = RecentCalls::new(100, ttl);
        let t0 = Instant::now();
        r.insert_if_absent_at("a", || call("x"), t0);
        // Another call rotates the generation half way, so "a" is read from the previous one.
        r.insert_if_absent_at("b", || call("x"), t0 + ttl / 2);
        let almost = t0 + ttl - Duration::from_millis(1);
        assert_eq!(tenant_of(&r, "a", almost).as_deref(), Some("x"));
        assert_eq!(tenant_of(&r, "a", t0 + ttl), None);
        assert_eq!(tenant_of(&r, "b", t0 + ttl).as_deref(), Some("x"));
        assert_eq!(tenant_of(&r, "b", t0 + ttl / 2 + ttl), None);
    }

    #[test]
    fn the_first_live_call_owns_its_id_and_an_expired_one_does_not() {
        let ttl = Duration::from_secs(60);
        let s = Duration::from_secs(1);
        // Generations of two entries.
        let r = RecentCalls::new(4, ttl);
        let t0 = Instant::now();
        r.insert_if_absent_at("id", || call("owner"), t0);
        r.insert_if_absent_at("id", || call("intruder"), t0 + s);
        assert_eq!(tenant_of(&r, "id", t0 + s).as_deref(), Some("owner"));
        r.insert_if_absent_at("x1", || call("x"), t0 + s);
        r.insert_if_absent_at("x2", || call("x"), t0 + s * 2);
        // In the previous generation now, still the owner's.
        r.insert_if_absent_at("id", || call("intruder"), t0 + s * 3);
        assert_eq!(tenant_of(&r, "id", t0 + s * 3).as_deref(), Some("owner"));
        // Expired: the next call with the id owns it, in the previous generation or the
        // current one.
        r.insert_if_absent_at("id", || call("late"), t0 + ttl);
        assert_eq!(tenant_of(&r, "id", t0 + ttl).as_deref(), Some("late"));
        r.insert_if_absent_at("id", || call("later"), t0 + ttl * 2);
        assert_eq!(tenant_of(&r, "id", t0 + ttl * 2).as_deref(), Some("later"));
        assert_eq!(tenant_of(&r, "id", t0 + ttl * 3), None);
    }

    #[test]
    fn capacity_bounds_the_entries_and_the_newest_stay() {
        let ttl = Duration::from_secs(3600);
        let t0 = Instant::now();
        for capacity in [1, 2, 3, 10, 1000, 5000] {
            let r = RecentCalls::new(capacity, ttl);
            for i in 0..capacity * 10 {
                r.insert_if_absent_at(&format!("id-{i}"), || call("x"), t0);
                assert!(r.held() as u64 <= capacity, "capacity {capacity}");
            }
            let newest = format!("id-{}", capacity * 10 - 1);
            assert!(r.get_at(&newest, t0).is_some(), "capacity {capacity}");
            // The newest half of the capacity (of every shard's share) is still there.
            let shards = if capacity >= SHARDED_FROM as u64 {
                SHARDS as u64
            } else {
                1
            };
            let kept = (capacity / shards / 2).max(1) * shards;
            // Hashing spreads the newest calls unevenly over the shards: check half of them.
            let check = if shards == 1 { kept } else { kept / 2 };
            let last = (capacity * 10 - check..capacity * 10)
                .filter(|i| r.get_at(&format!("id-{i}"), t0).is_some())
                .count() as u64;
            assert_eq!(last, check, "capacity {capacity}");
        }
    }

    #[test]
    fn a_call_taking_over_an_expired_id_outlives_the_rotations_after_it() {
        let ttl = Duration::from_secs(60);
        let r = RecentCalls::new(100, ttl);
        let t0 = Instant::now();
        r.insert_if_absent_at("id", || call("first"), t0);
        let t1 = t0 + ttl + ttl / 2;
        r.insert_if_absent_at("id", || call("second"), t1);
        r.insert_if_absent_at("other", || call("x"), t0 + ttl * 2);
        assert_eq!(tenant_of(&r, "id", t0 + ttl * 2).as_deref(), Some("second"));
        assert_eq!(tenant_of(&r, "id", t1 + ttl), None);
    }

    #[test]
    fn rotation_by_age_drops_expired_generations() {
        let ttl = Duration::from_secs(60);
        let r = RecentCalls::new(100, ttl);
        let t0 = Instant::now();
        for i in 0..10 {
            r.insert_if_absent_at(&format!("old-{i}"), || call("x"), t0);
        }
        r.insert_if_absent_at("new", || call("x"), t0 + ttl * 2);
        assert_eq!(r.held(), 1);
    }

    #[test]
    fn concurrent_callers_each_find_their_calls() {
        let r = Arc::new(RecentCalls::new(100_000, Duration::from_secs(3600)));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let tenant = format!("t{t}");
                    for i in 0..5000 {
                        let id = format!("{t}-{i}");
                        r.insert_if_absent(&id, || call(&tenant));
                        assert_eq!(
                            r.get(&id)
                                .and_then(|e| e.tenant)
                                .as_ref()
                                .map(TenantId::as_str),
                            Some(tenant.as_str())
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.held(), 20_000);
    }
}
