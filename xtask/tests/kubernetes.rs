//! packaging/kubernetes/ and the Helm chart, parsed as strict typed Kubernetes objects: each
//! document must deserialize into its k8s-openapi type and serialize back to exactly what was
//! written, so a misspelt or misplaced field (which plain deserialization would ignore) fails.
//! The chart, rendered with its default values, must give the same objects as the manifests.

use std::{collections::BTreeMap, path::PathBuf};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde_json::Value;

fn packaging() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Paths where two JSON values differ.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                diff(&format!("{path}.{k}"), x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("{path}: written {a}, understood as {b}")),
        _ => {}
    }
}

fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut d = Vec::new();
    diff("", doc, &back, &mut d);
    if d.is_empty() { Ok(back) } else { Err(format!("unknown or mistyped fields:\n  {}", d.join("\n  "))) }
}

/// Every document of a YAML stream, checked against its kind's type; keyed "Kind/name".
fn objects(yaml: &str, source: &str) -> Result<BTreeMap<String, Value>, String> {
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).map_err(|e| format!("{source}: {e}"))?;
        if v.is_null() {
            continue;
        }
        let v: Value = serde_json::to_value(&v).map_err(|e| format!("{source}: {e}"))?;
        let kind = v["kind"].as_str().unwrap_or("").to_string();
        let checked = match kind.as_str() {
            "Namespace" => strict::<Namespace>(&v),
            "ServiceAccount" => strict::<ServiceAccount>(&v),
            "ClusterRole" => strict::<ClusterRole>(&v),
            "ClusterRoleBinding" => strict::<ClusterRoleBinding>(&v),
            "ConfigMap" => strict::<ConfigMap>(&v),
            "DaemonSet" => strict::<DaemonSet>(&v),
            other => Err(format!("unexpected kind {other:?}")),
        }
        .map_err(|e| format!("{source}: {kind}: {e}"))?;
        let name = checked["metadata"]["name"].as_str().unwrap_or("").to_string();
        if out.insert(format!("{kind}/{name}"), checked).is_some() {
            return Err(format!("{source}: {kind}/{name} defined twice"));
        }
    }
    Ok(out)
}

fn manifests() -> BTreeMap<String, Value> {
    let dir = packaging().join("kubernetes");
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let objs = objects(&read(&path), &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
            all.extend(objs);
        }
    }
    all
}

/// The subset of Helm's template language the chart uses: `.Release.Name`, `.Release.Namespace`,
/// `.Values.a.b`, `X | quote`, `toYaml .Values.x | nindent N`, and `{{-`/`-}}` trimming. Anything
/// else is an error, so the chart cannot drift beyond what this check understands.
fn render(template: &str, values: &serde_yaml::Value, release: &str, namespace: &str) -> Result<String, String> {
    let lookup = |path: &str| -> Result<serde_yaml::Value, String> {
        let mut v = values;
        for part in path.split('.') {
            v = v.get(part).ok_or_else(|| format!("no value .Values.{path}"))?;
        }
        Ok(v.clone())
    };
    let scalar = |expr: &str| -> Result<String, String> {
        match expr {
            ".Release.Name" => Ok(release.to_string()),
            ".Release.Namespace" => Ok(namespace.to_string()),
            e => match lookup(e.strip_prefix(".Values.").ok_or_else(|| format!("unsupported {{{{ {e} }}}}"))?)? {
                serde_yaml::Value::String(s) => Ok(s),
                serde_yaml::Value::Number(n) => Ok(n.to_string()),
                serde_yaml::Value::Bool(b) => Ok(b.to_string()),
                other => Err(format!("{e} is not a scalar: {other:?}")),
            },
        }
    };
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").ok_or("unclosed {{")? + start;
        let mut expr = &rest[start + 2..end];
        if let Some(e) = expr.strip_prefix('-') {
            out.truncate(out.trim_end().len());
            expr = e;
        }
        let trim_right = expr.ends_with('-');
        let expr = expr.trim_end_matches('-').trim();
        let parts: Vec<&str> = expr.split('|').map(str::trim).collect();
        let text = match parts.as_slice() {
            [e] => scalar(e)?,
            [e, "quote"] => format!("{:?}", scalar(e)?),
            [to_yaml, nindent] if to_yaml.starts_with("toYaml .Values.") && nindent.starts_with("nindent ") => {
                let v = lookup(&to_yaml["toYaml .Values.".len()..])?;
                let n: usize = nindent["nindent ".len()..].parse().map_err(|_| format!("bad {nindent}"))?;
                let yaml = serde_yaml::to_string(&v).map_err(|e| e.to_string())?;
                yaml.trim_end().lines().map(|l| format!("\n{}{l}", " ".repeat(n))).collect()
            }
            _ => return Err(format!("unsupported template construct {{{{ {expr} }}}}")),
        };
        out.push_str(&text);
        rest = &rest[end + 2..];
        if trim_right {
            rest = rest.trim_start();
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn chart_yaml(name: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(&packaging().join("helm/flow-agent").join(name))).unwrap()
}

fn rendered_chart(values: &serde_yaml::Value) -> BTreeMap<String, Value> {
    let dir = packaging().join("helm/flow-agent/templates");
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let source = path.display().to_string();
        let text = render(&read(&path), values, "flow-agent", "flow-agent").unwrap_or_else(|e| panic!("{source}: {e}"));
        all.extend(objects(&text, &source).unwrap_or_else(|e| panic!("{e}\n--- rendered:\n{text}")));
    }
    all
}

#[test]
fn manifests_are_strict_kubernetes_objects() {
    let m = manifests();
    let keys: Vec<&str> = m.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "ClusterRole/flow-agent",
            "ClusterRoleBinding/flow-agent",
            "ConfigMap/flow-agent",
            "DaemonSet/flow-agent",
            "Namespace/flow-agent",
            "ServiceAccount/flow-agent"
        ]
    );
}

#[test]
fn a_misspelt_field_fails() {
    let ds = read(&packaging().join("kubernetes/daemonset.yaml"));
    assert!(objects(&ds, "daemonset.yaml").is_ok());
    let e = objects(&ds.replace("hostNetwork:", "hostNetwrok:"), "daemonset.yaml").unwrap_err();
    assert!(e.contains("hostNetwrok"), "{e}");
    let e = objects(&ds.replace("readOnly: true", "readonly: true"), "daemonset.yaml").unwrap_err();
    assert!(e.contains("readonly"), "{e}");
    let e = objects(&ds.replace("port: 9464", "port: [9464]"), "daemonset.yaml").unwrap_err();
    assert!(e.contains("daemonset.yaml"), "{e}");
}

#[test]
fn the_daemonset_is_what_the_agent_needs() {
    let m = manifests();
    let ds: DaemonSet = serde_json::from_value(m["DaemonSet/flow-agent"].clone()).unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    // walk_netns_all finds the pods' namespaces through the node's processes.
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("flow-agent"));
    let c = &pod.containers[0];
    let node = c.env.as_ref().unwrap().iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(node.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "spec.nodeName");
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(&["BPF".to_string(), "PERFMON".into(), "NET_ADMIN".into(), "SYS_ADMIN".into(), "SYS_PTRACE".into()][..])
    );
    let res = c.resources.as_ref().unwrap();
    assert!(res.requests.is_some() && res.limits.is_some());

    // Probes hit /healthz on the port the ConfigMap's config gives the agent.
    let config = m["ConfigMap/flow-agent"]["data"]["config.toml"].as_str().unwrap().to_string();
    let port = config
        .lines()
        .find_map(|l| l.strip_prefix("metrics_address = \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse::<i32>().ok())
        .expect("metrics_address in the ConfigMap");
    for probe in [c.liveness_probe.as_ref().unwrap(), c.readiness_probe.as_ref().unwrap()] {
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/healthz"));
        assert_eq!(get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port));
    }
    // Every setting in the ConfigMap is one the agent documents (and so accepts).
    let documented = read(&packaging().join("config.toml"));
    for key in
        config.lines().filter(|l| !l.starts_with('#') && l.contains(" = ")).map(|l| l.split(" = ").next().unwrap())
    {
        assert!(
            documented.contains(&format!("# {key} = ")),
            "ConfigMap sets {key:?}, which packaging/config.toml does not document"
        );
    }
    // The host's cgroup2, BTF and tracefs come in by hostPath; the cgroup is the one configured.
    let volumes = pod.volumes.unwrap();
    let host = |p: &str| volumes.iter().any(|v| v.host_path.as_ref().is_some_and(|h| h.path == p));
    assert!(host("/sys/fs/cgroup") && host("/sys/kernel/btf") && host("/sys/kernel/tracing"));
    assert!(config.contains("cgroup = \"/host/sys/fs/cgroup\""));
    assert!(config.contains("walk_netns_all = true"), "the capabilities and hostPID above are for it");

    // RBAC: list and watch pods, services and endpointslices, nothing else.
    let role: ClusterRole = serde_json::from_value(m["ClusterRole/flow-agent"].clone()).unwrap();
    let rules: Vec<(Vec<String>, Vec<String>)> =
        role.rules.unwrap().into_iter().map(|r| (r.resources.unwrap_or_default(), r.verbs)).collect();
    let lw = vec!["list".to_string(), "watch".to_string()];
    assert_eq!(
        rules,
        vec![(vec!["pods".to_string(), "services".to_string()], lw.clone()), (vec!["endpointslices".to_string()], lw)]
    );
}

#[test]
fn the_chart_renders_the_same_objects() {
    let chart = chart_yaml("Chart.yaml");
    let values = chart_yaml("values.yaml");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["appVersion"].as_str(), Some(version));
    assert_eq!(values["image"]["tag"].as_str(), Some(version));
    let mut plain = manifests();
    plain.remove("Namespace/flow-agent");
    let rendered = rendered_chart(&values);
    assert_eq!(rendered.keys().collect::<Vec<_>>(), plain.keys().collect::<Vec<_>>());
    for (key, obj) in &plain {
        let mut d = Vec::new();
        diff(key, obj, &rendered[key], &mut d);
        assert!(d.is_empty(), "the chart's {key} differs from packaging/kubernetes:\n{}", d.join("\n"));
    }
    assert_eq!(
        plain["DaemonSet/flow-agent"]["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("flow-agent:{version}")
    );

    // Values take effect.
    let mut v = values.clone();
    v["hostCgroupPath"] = "/sys/fs/cgroup/unified".into();
    v["resources"]["limits"]["memory"] = "1Gi".into();
    let r = rendered_chart(&v);
    let ds = &r["DaemonSet/flow-agent"]["spec"]["template"]["spec"];
    assert!(ds["volumes"].as_array().unwrap().iter().any(|v| v["hostPath"]["path"] == "/sys/fs/cgroup/unified"));
    assert_eq!(ds["containers"][0]["resources"]["limits"]["memory"], "1Gi");
}

#[test]
fn unsupported_template_constructs_are_refused() {
    let values: serde_yaml::Value = serde_yaml::from_str("a: 1").unwrap();
    let e = render("x: {{ .Values.a | default 2 }}", &values, "r", "n").unwrap_err();
    assert!(e.contains("default 2"), "{e}");
    let e = render("x: {{ .Values.b }}", &values, "r", "n").unwrap_err();
    assert!(e.contains(".Values.b"), "{e}");
    assert_eq!(render("x: {{ .Values.a | quote }}", &values, "r", "n").unwrap(), "x: \"1\"");
    assert_eq!(
        render("x:\n  {{- toYaml .Values | nindent 2 }}", &values, "r", "n").unwrap_err(),
        "unsupported template construct {{ toYaml .Values | nindent 2 }}"
    );
    assert_eq!(render("x:  {{- .Release.Name -}}  \ny", &values, "r", "n").unwrap(), "x:ry");
}
