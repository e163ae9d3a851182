//! Seed 002's leader election: one object per election (the path's name), by typed call
//! ([`Election`]) or HTTP:
//!
//! - `POST /elect` `{nodeId, ttl}` → `{leader, isLeader, term, expiresAt}`. A node becomes
//!   leader when there is none or the leader's lease has ended; the leader itself renews its
//!   lease for `ttl` ms from now. Any other node learns who leads and until when.
//! - `POST /resign` `{nodeId}` → the same shape; the leader's lease ends now.
//! - `GET /` (or `/leader`) → the same shape for nobody in particular (`isLeader: false`).
//!
//! `term` is a fencing number: it grows by one with every change of leader and never goes back,
//! so a deposed leader's writes can be refused by whoever checks the term. A leader that renews
//! (or reclaims a lapsed lease nobody else took) keeps its term. Expiry is by the clock.

use rookery::prelude::*;
use serde::{Deserialize, Serialize};

use crate::input::{Body, InputError, method_not_allowed, not_found};

/// Longest node id, in bytes.
const MAX_NODE_BYTES: usize = 512;
/// Longest lease: a day.
const MAX_TTL_MS: u64 = 24 * 3600 * 1000;
const KEY: &str = "leader";

/// The state of the election as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leadership {
    /// The current leader, if its lease has not ended.
    pub leader: Option<String>,
    /// Whether the asking node is the leader.
    pub is_leader: bool,
    /// The fencing term: one more with every change of leader.
    pub term: u64,
    /// When the leader's lease ends, ms since the epoch.
    pub expires_at: Option<i64>,
}

/// The election as a typed service.
#[rookery::service]
pub trait Election {
    /// Claims or renews leadership for `node_id` for `ttl_ms` (1 ms to a day).
    async fn elect(&mut self, node_id: String, ttl_ms: u64) -> rookery::Result<Leadership>;
    /// Ends `node_id`'s lease now if it leads.
    async fn resign(&mut self, node_id: String) -> rookery::Result<Leadership>;
    /// Who leads now.
    async fn leader(&mut self) -> rookery::Result<Leadership>;
}

/// The stored lease: the last leader (even when its lease has ended) and the term.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Lease {
    leader: Option<String>,
    expires_at: i64,
    term: u64,
}

fn check_node(node_id: &str) -> Result<(), InputError> {
    if node_id.is_empty() || node_id.len() > MAX_NODE_BYTES {
        return Err(InputError::invalid(
            "nodeId",
            format!("must be a non-empty string of at most {MAX_NODE_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// One election.
pub struct LeaderElection {
    state: ObjectState,
}

impl LeaderElection {
    fn lease(&self) -> Result<Lease> {
        Ok(self.state.storage().get(KEY)?.unwrap_or_default())
    }

    /// The election as of `now`: a turn decides and answers with the same time, so a lease
    /// granted for 1 ms is reported as granted.
    fn view(lease: &Lease, node_id: Option<&str>, now: i64) -> Leadership {
        let live = lease.expires_at > now;
        let leader = lease.leader.clone().filter(|_| live);
        Leadership {
            is_leader: leader.is_some() && leader.as_deref() == node_id,
            expires_at: leader.as_ref().map(|_| lease.expires_at),
            leader,
            term: lease.term,
        }
    }

    fn claim(&mut self, node_id: &str, ttl_ms: u64) -> Result<Leadership> {
        check_node(node_id)?;
        if !(1..=MAX_TTL_MS).contains(&ttl_ms) {
            return Err(InputError::invalid(
                "ttl",
                format!("must be an integer from 1 to {MAX_TTL_MS}"),
            )
            .into());
        }
        let now = self.state.now_ms();
        let mut lease = self.lease()?;
        let same = lease.leader.as_deref() == Some(node_id);
        if lease.expires_at > now && !same {
            return Ok(Self::view(&lease, Some(node_id), now));
        }
        if !same {
            lease.term += 1;
            lease.leader = Some(node_id.to_string());
        }
        lease.expires_at = now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        self.state.storage().put(KEY, &lease)?;
        Ok(Self::view(&lease, Some(node_id), now))
    }

    fn step_down(&mut self, node_id: &str) -> Result<Leadership> {
        check_node(node_id)?;
        let now = self.state.now_ms();
        let mut lease = self.lease()?;
        if lease.leader.as_deref() == Some(node_id) && lease.expires_at > now {
            lease.expires_at = now;
            self.state.storage().put(KEY, &lease)?;
        }
        Ok(Self::view(&lease, Some(node_id), now))
    }

    fn http(&mut self, path: &str, req: &Request) -> Result<Response> {
        let body = match Body::parse(req) {
            Ok(body) => body,
            Err(e) => return Ok(e.response()),
        };
        let node_id = match body.string("nodeId", MAX_NODE_BYTES) {
            Ok(node_id) => node_id,
            Err(e) => return Ok(e.response()),
        };
        let answer = if path == "/elect" {
            match body.integer("ttl", 1, MAX_TTL_MS) {
                Ok(ttl) => self.claim(&node_id, ttl)?,
                Err(e) => return Ok(e.response()),
            }
        } else {
            self.step_down(&node_id)?
        };
        Response::json(&answer)
    }
}

impl Election for LeaderElection {
    async fn elect(&mut self, node_id: String, ttl_ms: u64) -> Result<Leadership> {
        self.claim(&node_id, ttl_ms)
    }

    async fn resign(&mut self, node_id: String) -> Result<Leadership> {
        self.step_down(&node_id)
    }

    async fn leader(&mut self) -> Result<Leadership> {
        Ok(Self::view(&self.lease()?, None, self.state.now_ms()))
    }
}

impl DurableObject for LeaderElection {
    fn new(state: ObjectState, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        let path = req.path().to_string();
        match path.as_str() {
            "/elect" | "/resign" if req.method() == Method::POST => self.http(&path, &req),
            "/elect" | "/resign" => Ok(method_not_allowed("POST")),
            "/" | "/leader" if req.method() == Method::GET => {
                Response::json(&Self::view(&self.lease()?, None, self.state.now_ms()))
            }
            "/" | "/leader" => Ok(method_not_allowed("GET")),
            _ => Ok(not_found()),
        }
    }

    async fn call(&mut self, call: Call) -> Result<Reply> {
        Election::serve(self, call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery::testing::TestHarness;
    use serde_json::{Value, json};
    use std::sync::Arc;
    use std::time::Duration;

    fn stub(h: &TestHarness) -> ElectionStub {
        h.namespace()
            .unwrap()
            .typed::<ElectionStub>()
            .get_by_name("db")
    }

    #[tokio::test]
    async fn the_first_claimant_leads_until_its_lease_ends_and_the_term_grows_per_leader() {
        let h = TestHarness::new::<LeaderElection>().unwrap();
        let election = stub(&h);
        let a = election.elect("a".into(), 10_000).await.unwrap();
        assert_eq!(
            (a.leader.as_deref(), a.is_leader, a.term),
            (Some("a"), true, 1)
        );
        let b = election.elect("b".into(), 10_000).await.unwrap();
        assert_eq!(
            (b.leader.as_deref(), b.is_leader, b.term),
            (Some("a"), false, 1)
        );
        assert_eq!(b.expires_at, a.expires_at);
        // The leader renews and keeps its term.
        h.advance(Duration::from_millis(9_000));
        let renewed = election.elect("a".into(), 10_000).await.unwrap();
        assert!(renewed.is_leader && renewed.term == 1);
        assert!(renewed.expires_at > a.expires_at);
        h.advance(Duration::from_millis(9_999));
        assert!(!election.elect("b".into(), 10_000).await.unwrap().is_leader);
        // The lease ends by the clock: b takes over with a new term.
        h.advance(Duration::from_millis(1));
        assert_eq!(election.leader().await.unwrap().leader, None);
        let b = election.elect("b".into(), 10_000).await.unwrap();
        assert_eq!(
            (b.leader.as_deref(), b.is_leader, b.term),
            (Some("b"), true, 2)
        );
        // Resigning frees the lease at once; the next leader gets the next term.
        let gone = election.resign("b".into()).await.unwrap();
        assert_eq!((gone.leader, gone.term), (None, 2));
        let a = election.elect("a".into(), 10_000).await.unwrap();
        assert_eq!((a.is_leader, a.term), (true, 3));
        // Only the leader can resign.
        assert!(election.resign("b".into()).await.unwrap().leader.is_some());
    }

    #[tokio::test]
    async fn concurrent_claims_elect_exactly_one_leader() {
        let h = Arc::new(TestHarness::new::<LeaderElection>().unwrap());
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { stub(&h).elect(format!("n{i}"), 60_000).await.unwrap() })
            })
            .collect();
        let mut leaders = Vec::new();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.term, 1);
            if r.is_leader {
                leaders.push(r.leader.unwrap());
            }
        }
        assert_eq!(leaders.len(), 1, "{leaders:?}");
    }

    #[tokio::test]
    async fn the_http_form_follows_the_seed_shape_and_names_bad_fields() {
        let h = TestHarness::new::<LeaderElection>().unwrap();
        let post = |path: &str, body: Value| Request::post(path).unwrap().with_json(&body).unwrap();
        let r = h
            .fetch("db", post("/elect", json!({"nodeId": "a", "ttl": 5_000})))
            .await
            .unwrap();
        let v: Value = r.json_body().unwrap();
        assert_eq!(v["leader"], "a");
        assert_eq!(v["isLeader"], true);
        assert_eq!(v["term"], 1);
        assert!(v["expiresAt"].is_i64());
        for (body, field) in [
            (json!({"ttl": 5}), "nodeId"),
            (json!({"nodeId": "a"}), "ttl"),
            (json!({"nodeId": "a", "ttl": 0}), "ttl"),
            (json!({"nodeId": ["a"], "ttl": 5}), "nodeId"),
        ] {
            let r = h.fetch("db", post("/elect", body.clone())).await.unwrap();
            assert_eq!(r.status(), 400, "{body}");
            assert_eq!(r.json_body::<Value>().unwrap()["field"], field, "{body}");
        }
        let r = h.fetch("db", Request::get("/").unwrap()).await.unwrap();
        let v: Value = r.json_body().unwrap();
        assert_eq!(
            (v["leader"].as_str(), v["isLeader"].as_bool()),
            (Some("a"), Some(false))
        );
    }
}
