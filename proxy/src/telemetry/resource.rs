//! The resource attributes a sidecar's telemetry carries besides its workload's: the facts
//! of its deployment (`deployment.environment.name`, `k8s.cluster.name`, `cloud.region`, ...),
//! as Istio's literal and environment custom tags give them, from the `[telemetry]
//! resource_attributes` table and from OpenTelemetry's `OTEL_RESOURCE_ATTRIBUTES` variable
//! (`key=value` pairs joined by commas, values percent-encoded), the table winning a key both
//! name.
//!
//! The keys the sidecar sets itself (its workload's identity, from `[workload]`, and
//! `telemetry.sdk.*`) are not replaced: the collector's topology rests on them. Naming one in
//! the table is a configuration error; in the variable, which a platform may fill for every
//! container of a pod, it is skipped with a warning. A variable that does not parse is
//! ignored whole with a warning, as OpenTelemetry's SDKs ignore it.
//!
//! `service.instance.id`, which tells a workload's replicas apart (the collector keeps each
//! one's process figures under it), is taken from the table or the variable when they set
//! it (a pod's name, say); otherwise each start draws a random UUID, as OpenTelemetry's
//! conventions recommend.

use std::collections::BTreeMap;

use meshlens_common::semconv;

use super::otel_env;

/// The attribute keys the sidecar writes on its resource itself.
const OWN_KEYS: [&str; 7] = [
    semconv::RESOURCE_KEYS.namespace,
    semconv::RESOURCE_KEYS.service,
    semconv::RESOURCE_KEYS.workload,
    semconv::RESOURCE_KEYS.version,
    "telemetry.sdk.name",
    "telemetry.sdk.language",
    "telemetry.sdk.version",
];

/// The variable OpenTelemetry's SDKs read resource attributes from.
pub const ENV_VAR: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// The key of the attribute that tells instances of one service apart.
pub const INSTANCE_ID: &str = "service.instance.id";

/// Extra resource attributes, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceAttributes(BTreeMap<String, String>);

impl ResourceAttributes {
    /// The `[telemetry] resource_attributes` table, checked: no empty key, none of the
    /// sidecar's own.
    pub fn from_table(table: BTreeMap<String, String>) -> Result<Self, String> {
        for key in table.keys() {
            if key.trim().is_empty() {
                return Err("telemetry.resource_attributes: an attribute needs a key".into());
            }
            if OWN_KEYS.contains(&key.as_str()) {
                return Err(format!("telemetry.resource_attributes: {key:?} is the sidecar's own (set it in [workload])"));
            }
        }
        Ok(Self(table))
    }

    /// Adds the attributes of `OTEL_RESOURCE_ATTRIBUTES`'s `value` the table does not name:
    /// what was left out, and why, for the log.
    pub fn add_environment(&mut self, value: &str) -> Vec<String> {
        otel_env::add_list(ENV_VAR, value, otel_env::Quote::Yes, |key, value| {
            if OWN_KEYS.contains(&key.as_str()) {
                return Err(format!("{ENV_VAR}: {key:?} skipped, the sidecar's [workload] sets it"));
            }
            self.0.entry(key).or_insert(value);
            Ok(())
        })
    }

    /// These attributes with `service.instance.id` drawn at random when none sets it.
    pub fn with_instance_id(&self) -> Self {
        let mut attributes = self.clone();
        attributes.0.entry(INSTANCE_ID.to_owned()).or_insert_with(random_uuid);
        attributes
    }

    /// The attributes, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A random UUID, version 4 (RFC 9562), in its hyphenated lowercase form.
fn random_uuid() -> String {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = bytes[6] & 0x0f | 0x40;
    bytes[8] = bytes[8] & 0x3f | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn listed(attributes: &ResourceAttributes) -> Vec<(&str, &str)> {
        attributes.iter().collect()
    }

    #[test]
    fn the_table_is_taken_but_for_the_sidecars_own_keys() {
        let attributes = ResourceAttributes::from_table(table(&[("k8s.cluster.name", "east"), ("deployment.environment.name", "prod")]));
        let attributes = attributes.expect("valid");
        assert_eq!(listed(&attributes), [("deployment.environment.name", "prod"), ("k8s.cluster.name", "east")]);
        for own in ["service.name", "meshlens.workload", "telemetry.sdk.name"] {
            let error = ResourceAttributes::from_table(table(&[(own, "x")])).expect_err("the sidecar's own");
            assert!(error.contains(own) && error.contains("[workload]"), "{error}");
        }
        assert!(ResourceAttributes::from_table(table(&[(" ", "x")])).is_err());
    }

    #[test]
    fn the_variable_adds_what_the_table_does_not_name() {
        let mut attributes = ResourceAttributes::from_table(table(&[("deployment.environment.name", "prod")])).expect("valid");
        let skipped = attributes.add_environment(
            " k8s.pod.name = shop-7f9c ,deployment.environment.name=dev,, team=a%20b%2Cc,service.name=other,empty=",
        );
        assert_eq!(
            listed(&attributes),
            [("deployment.environment.name", "prod"), ("empty", ""), ("k8s.pod.name", "shop-7f9c"), ("team", "a b,c")],
        );
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].contains("service.name"), "{skipped:?}");
    }

    #[test]
    fn a_variable_that_does_not_parse_is_ignored_whole() {
        for broken in ["k8s.pod.name=shop,oops", "=value", "team=%zz", "team=%e9"] {
            let mut attributes = ResourceAttributes::default();
            let skipped = attributes.add_environment(broken);
            assert_eq!(listed(&attributes), [], "{broken}");
            assert!(skipped.len() == 1 && skipped[0].starts_with("OTEL_RESOURCE_ATTRIBUTES ignored: "), "{skipped:?}");
        }
    }

    #[test]
    fn an_instance_id_is_drawn_unless_the_table_or_the_variable_sets_one() {
        let drawn = ResourceAttributes::default().with_instance_id();
        let id = drawn.iter().find(|(k, _)| *k == INSTANCE_ID).map(|(_, v)| v.to_owned()).expect("drawn");
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{id}");
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert!("89ab".contains(&id[19..20]), "RFC variant: {id}");
        let again = ResourceAttributes::default().with_instance_id();
        assert_ne!(listed(&drawn), listed(&again), "each start draws its own");

        let mut named = ResourceAttributes::default();
        named.add_environment("service.instance.id=shop-7f9c");
        assert_eq!(listed(&named.with_instance_id()), [(INSTANCE_ID, "shop-7f9c")]);
    }
}
