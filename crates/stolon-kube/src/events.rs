//! Kubernetes Events for the leader sentinel's failover decisions, on the keeper pods (what
//! `kubectl describe pod` and `kubectl get events` show).
//!
//! Decisions:
//! - The core/v1 Event API (not events.k8s.io/v1): it is what Stolon's client-go recorder writes
//!   and what Stolon's RBAC grants (`events` in the core group), and `kubectl describe` shows it.
//!   Fields: `involvedObject` (the keeper's pod, with its UID), `reason`, `message`, `type`
//!   (`Normal` / `Warning`), `source.component` and `reportingComponent` `stolon-sentinel`,
//!   `reportingInstance` the sentinel's pod, `firstTimestamp` = `lastTimestamp`, `count` 1.
//!   Failovers are rare, so each is its own Event (no client-side aggregation).
//! - Which decisions: the master failing ([`Event::MasterDbFailed`], `Warning MasterFailed`, on
//!   the old master's pod), not converging (`Warning MasterNotConverged`), a forced failure
//!   (`stolonctl failkeeper` / `promote`: `Normal KeeperForceFailed`), the new master
//!   (`Normal NewMasterElected` on its pod), the old master fenced (`Normal OldMasterFenced` on
//!   its pod), the initial master (`Normal InitialMasterElected`) and a failover with no
//!   candidate (`Warning NoEligibleMaster`, on the cluster's ConfigMap: no pod to name).
//! - A keeper's pod is found from the last keeper listing (the sentinel lists keepers before
//!   each decision), also when the pod no longer runs, as long as it exists. No pod: no Event.
//! - Creating Events never blocks the sentinel: [`EventSink::publish`] spawns the requests, each
//!   bounded by the store timeout; a failure is logged as a warning and dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event as KubeEvent, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use stolon_core::sentinel::Event;

use crate::api::call;

/// `source.component` and `reportingComponent` of the Events.
pub const EVENT_COMPONENT: &str = "stolon-sentinel";

/// Event type `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something needs attention.
    Warning,
}

impl EventType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What a decision event becomes, before the object it is about is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    /// The keeper whose pod the Event is on; `None`: the cluster's ConfigMap.
    pub keeper: Option<String>,
    /// Normal or Warning.
    pub type_: EventType,
    /// CamelCase reason.
    pub reason: &'static str,
    /// One line for people.
    pub message: String,
}

/// The Kubernetes Event for a decision event, if it is one users watch for.
pub fn event_spec(ev: &Event) -> Option<EventSpec> {
    let on = |keeper: &str, type_, reason, message: String| {
        Some(EventSpec {
            keeper: Some(keeper.to_string()),
            type_,
            reason,
            message,
        })
    };
    use EventType::{Normal, Warning};
    match ev {
        Event::MasterDbFailed { db, keeper } => on(
            keeper,
            Warning,
            "MasterFailed",
            format!(
                "master db {db} on keeper {keeper} is failed: looking for a standby to replace it"
            ),
        ),
        Event::MasterDbNotConverged { db, keeper } => on(
            keeper,
            Warning,
            "MasterNotConverged",
            format!(
                "master db {db} on keeper {keeper} did not converge in time: looking for a standby to replace it"
            ),
        ),
        Event::KeeperForceFailed { keeper } => on(
            keeper,
            Normal,
            "KeeperForceFailed",
            format!("keeper {keeper} forced as failed"),
        ),
        Event::ElectingNewMaster { db, keeper } => on(
            keeper,
            Normal,
            "NewMasterElected",
            format!("failover: db {db} on keeper {keeper} elected as the new master"),
        ),
        Event::RemovingOldMasterDb { db, keeper } => on(
            keeper,
            Normal,
            "OldMasterFenced",
            format!("old master db {db} on keeper {keeper} removed from the cluster (fenced)"),
        ),
        Event::InitializingCluster { db, keeper } => on(
            keeper,
            Normal,
            "InitialMasterElected",
            format!("initializing cluster: db {db} on keeper {keeper} is the initial master"),
        ),
        Event::NoEligibleMasters { reasons } => Some(EventSpec {
            keeper: None,
            type_: Warning,
            reason: "NoEligibleMaster",
            message: format!("no standby can replace the failed master: {reasons}"),
        }),
        _ => None,
    }
}

/// A keeper's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodRef {
    pub name: String,
    pub uid: Option<String>,
}

/// Turns decision events into Kubernetes Events.
#[derive(Clone)]
pub(crate) struct EventSink {
    api: Api<KubeEvent>,
    namespace: String,
    configmap: String,
    reporter: Option<String>,
    timeout: Duration,
    /// Keeper UID -> its pod, from the last keeper listing.
    keeper_pods: Arc<Mutex<HashMap<String, PodRef>>>,
}

impl EventSink {
    pub fn new(
        client: Client,
        namespace: &str,
        configmap: &str,
        reporter: Option<String>,
        timeout: Duration,
    ) -> EventSink {
        EventSink {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            configmap: configmap.to_string(),
            reporter,
            timeout,
            keeper_pods: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Replaces the keeper -> pod map (called with every keeper listing).
    pub fn set_keeper_pods(&self, pods: HashMap<String, PodRef>) {
        *self.keeper_pods.lock().expect("keeper pods poisoned") = pods;
    }

    fn object(&self, spec: &EventSpec) -> Option<(ObjectReference, String)> {
        match &spec.keeper {
            Some(keeper) => {
                let pods = self.keeper_pods.lock().expect("keeper pods poisoned");
                let Some(pod) = pods.get(keeper) else {
                    tracing::debug!(keeper, reason = spec.reason, "no pod for keeper: no event");
                    return None;
                };
                Some((
                    ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        namespace: Some(self.namespace.clone()),
                        name: Some(pod.name.clone()),
                        uid: pod.uid.clone(),
                        ..ObjectReference::default()
                    },
                    pod.name.clone(),
                ))
            }
            None => Some((
                ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("ConfigMap".into()),
                    namespace: Some(self.namespace.clone()),
                    name: Some(self.configmap.clone()),
                    ..ObjectReference::default()
                },
                self.configmap.clone(),
            )),
        }
    }

    /// Creates the Events for `events` in the background; never waits, never fails.
    pub fn publish(&self, events: &[Event]) {
        let now = Timestamp::now();
        let mut objects = Vec::new();
        for (i, spec) in events.iter().filter_map(event_spec).enumerate() {
            let Some((involved, name)) = self.object(&spec) else {
                continue;
            };
            // client-go's naming: the object's name and a unique hex suffix.
            let suffix = now.as_nanosecond().unsigned_abs().wrapping_add(i as u128);
            let time = Time(now);
            objects.push(KubeEvent {
                metadata: ObjectMeta {
                    name: Some(format!("{name}.{suffix:x}")),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                involved_object: involved,
                reason: Some(spec.reason.to_string()),
                message: Some(spec.message),
                type_: Some(spec.type_.as_str().to_string()),
                source: Some(EventSource {
                    component: Some(EVENT_COMPONENT.to_string()),
                    host: None,
                }),
                reporting_component: Some(EVENT_COMPONENT.to_string()),
                reporting_instance: self.reporter.clone(),
                first_timestamp: Some(time.clone()),
                last_timestamp: Some(time),
                count: Some(1),
                ..KubeEvent::default()
            });
        }
        if objects.is_empty() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to create kubernetes events on");
            return;
        };
        let api = self.api.clone();
        let timeout = self.timeout;
        handle.spawn(async move {
            for ev in objects {
                let reason = ev.reason.clone().unwrap_or_default();
                if let Err(f) = call(timeout, api.create(&PostParams::default(), &ev)).await {
                    tracing::warn!(reason, error = %f.into_store(), "cannot create kubernetes event");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_events_map_to_pod_events() {
        let failed = event_spec(&Event::MasterDbFailed {
            db: "d1".into(),
            keeper: "keeper0".into(),
        })
        .expect("an event");
        assert_eq!(failed.keeper.as_deref(), Some("keeper0"));
        assert_eq!(failed.type_, EventType::Warning);
        assert_eq!(failed.reason, "MasterFailed");
        let elected = event_spec(&Event::ElectingNewMaster {
            db: "d2".into(),
            keeper: "keeper1".into(),
        })
        .expect("an event");
        assert_eq!(elected.keeper.as_deref(), Some("keeper1"));
        assert_eq!(elected.type_, EventType::Normal);
        assert!(elected.message.contains("d2") && elected.message.contains("keeper1"));
        let none = event_spec(&Event::NoEligibleMasters {
            reasons: "x".into(),
        })
        .expect("an event");
        assert_eq!(none.keeper, None);
        assert_eq!(none.type_, EventType::Warning);
        // Routine observations are not Events.
        assert_eq!(event_spec(&Event::WaitingForProxies), None);
        assert_eq!(
            event_spec(&Event::NoKeeperInfo {
                db: "d".into(),
                keeper: "k".into()
            }),
            None
        );
    }
}
