//! ClusterRole aggregation (upstream's `clusterroleaggregation` controller): the rules of a
//! ClusterRole with an `aggregationRule` are the union of the rules of every other ClusterRole
//! its selectors match, in name order, kept so as those roles come, change and go.

use protocol::selector::LabelSelector;
use serde_json::{json, Value};

use super::view::{Key, View};
use super::{key_of, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::rbac::CLUSTER_ROLES;
use crate::store::Change;

/// The ClusterRole aggregation controller.
pub struct ClusterRoleAggregationController;

fn aggregates(role: &Value) -> bool {
    role["aggregationRule"].is_object()
}

/// The rules `role`'s aggregation rule gathers from the other cluster roles in `view`.
fn gathered(role: &Value, view: &View) -> Vec<Value> {
    let selectors: Vec<LabelSelector> = role["aggregationRule"]["clusterRoleSelectors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|selector| LabelSelector::from_json(selector).ok())
        .collect();
    let mut sources: Vec<&Value> = view
        .list(CLUSTER_ROLES)
        .map(|r| &**r)
        .filter(|other| other["metadata"]["name"] != role["metadata"]["name"])
        .filter(|other| selectors.iter().any(|s| s.matches_object(other)))
        .collect();
    sources.sort_by_key(|r| {
        r["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    let mut rules: Vec<Value> = Vec::new();
    for rule in sources
        .iter()
        .flat_map(|r| r["rules"].as_array().into_iter().flatten())
    {
        if !rules.contains(rule) {
            rules.push(rule.clone());
        }
    }
    rules
}

impl Reconciler for ClusterRoleAggregationController {
    fn name(&self) -> &'static str {
        "clusterrole-aggregation-controller"
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        if change.resource != CLUSTER_ROLES {
            return Vec::new();
        }
        // Any role may be selected by any aggregation rule: all of them look again.
        self.all_keys(view)
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list(CLUSTER_ROLES)
            .filter(|role| aggregates(role))
            .map(|role| key_of(role))
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let (role, rules) = {
            let view = ctx.view();
            let Some(role) = view.get(CLUSTER_ROLES, "", &key.1).cloned() else {
                return Ok(Action::Done);
            };
            if !aggregates(&role) {
                return Ok(Action::Done);
            }
            let rules = gathered(&role, &view);
            (role, rules)
        };
        let current = role["rules"].as_array().cloned().unwrap_or_default();
        if current == rules {
            return Ok(Action::Done);
        }
        ctx.update(CLUSTER_ROLES, "", &key.1, |role| {
            role["rules"] = json!(rules);
            Ok(())
        })?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::TestCluster;

    fn role(name: &str, labels: Value, rules: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    #[test]
    fn aggregated_roles_gather_the_rules_of_the_roles_they_select() {
        let cluster = TestCluster::new();
        let controller = ClusterRoleAggregationController;
        let key = (String::new(), "monitoring".to_owned());
        cluster.create(
            CLUSTER_ROLES,
            json!({"metadata": {"name": "monitoring"},
                   "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"aggregate-to-monitoring": "true"}}]}}),
        );
        let pods = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]});
        let nodes = json!({"verbs": ["list"], "apiGroups": [""], "resources": ["nodes"]});
        cluster.create(
            CLUSTER_ROLES,
            role(
                "b-pods",
                json!({"aggregate-to-monitoring": "true"}),
                json!([pods.clone()]),
            ),
        );
        cluster.create(
            CLUSTER_ROLES,
            role(
                "a-nodes",
                json!({"aggregate-to-monitoring": "true"}),
                json!([nodes.clone(), pods.clone()]),
            ),
        );
        cluster.create(
            CLUSTER_ROLES,
            role(
                "other",
                json!({}),
                json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]),
            ),
        );
        assert!(cluster.queued(&controller).contains(&key));
        cluster.reconcile(&controller, &key);
        let aggregated = cluster.get(CLUSTER_ROLES, &key).unwrap();
        assert_eq!(
            aggregated["rules"],
            json!([nodes, pods]),
            "name order, no repeats"
        );

        // A selected role losing its label takes its rules away.
        cluster.update(CLUSTER_ROLES, &(String::new(), "a-nodes".into()), |r| {
            r["metadata"]["labels"] = json!({});
        });
        assert!(cluster.queued(&controller).contains(&key));
        cluster.reconcile(&controller, &key);
        assert_eq!(
            cluster.get(CLUSTER_ROLES, &key).unwrap()["rules"],
            json!([pods])
        );
    }
}
