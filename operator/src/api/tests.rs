//! The CRDs as a whole: committed files match the generator, schemas are documented, bounded and
//! structured as Kubernetes expects, and the CEL rules accept and reject what they should.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::core::cel::{validate_cel, validate_cel_update};
use serde_json::Value;

use super::*;

fn schema(crd: &CustomResourceDefinition) -> Value {
    serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
}

#[test]
fn committed_crds_match_the_generator() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let hint = "regenerate with `cargo run -p mira-operator -- crd --out-dir crds`";
    let mut expected: Vec<String> = Vec::new();
    for crd in crds() {
        let name = crd_file_name(&crd);
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| panic!("crds/{name}: {e}; {hint}"));
        assert!(committed == crd_yaml(&crd), "crds/{name} differs from the generator; {hint}");
        expected.push(name);
    }
    let mut present: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    present.sort();
    expected.sort();
    assert_eq!(present, expected, "crds/ holds files the generator does not make; {hint}");
}

#[test]
fn every_kind_has_a_short_name_printer_columns_and_a_status_subresource() {
    let short: Vec<String> = crds().iter().flat_map(|c| c.spec.names.short_names.clone().unwrap_or_default()).collect();
    assert_eq!(
        short,
        ["sg", "rbs", "dj", "fr"],
        "rs would be ReplicaSets: kubectl resolves built-in short names first"
    );
    for crd in crds() {
        let version = &crd.spec.versions[0];
        let columns = version.additional_printer_columns.as_deref().unwrap_or_default();
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let kind = &crd.spec.names.kind;
        assert_eq!(names.first(), Some(&"Ready"), "{kind}");
        assert_eq!(names.last(), Some(&"Age"), "{kind}");
        assert!(names.contains(&"Stage") && names.contains(&"Progress"), "{kind}: {names:?}");
        // A column whose path names no field shows nothing, silently: every path must resolve.
        let schema =
            serde_json::to_value(version.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap();
        for column in columns.iter().filter(|c| !c.json_path.contains('[') && !c.json_path.starts_with(".metadata")) {
            let field = column
                .json_path
                .trim_start_matches('.')
                .split('.')
                .try_fold(&schema, |node, part| node.get("properties")?.get(part));
            assert!(field.is_some(), "{kind}: column {} reads {}, which is no field", column.name, column.json_path);
        }
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(version.name, "v1alpha1");
    }
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    for crd in crds() {
        let conditions = &schema(&crd)["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{}", crd.spec.names.kind);
        assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
        assert_eq!(conditions["items"]["properties"]["lastTransitionTime"]["format"], "date-time");
        assert!(schema(&crd)["properties"]["status"]["properties"]["observedGeneration"].is_object());
    }
}

/// Every property below `path`, with its path.
fn properties<'a>(path: String, schema: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let path = format!("{path}.{name}");
            out.push((path.clone(), prop));
            properties(path, prop, out);
        }
    }
    for nested in ["items", "additionalProperties"] {
        if let Some(inner) = schema.get(nested).filter(|v| v.is_object()) {
            properties(format!("{path}[]"), inner, out);
        }
    }
}

#[test]
fn every_list_is_bounded() {
    for crd in crds() {
        let schema = schema(&crd);
        let mut all = Vec::new();
        properties(crd.spec.names.kind.clone(), &schema, &mut all);
        for (path, prop) in all {
            if prop["type"] == "array" {
                assert!(prop.get("maxItems").is_some(), "{path} has no maxItems");
            }
            if prop["type"] == "object"
                && prop.get("additionalProperties").is_some_and(|a| a.get("type").is_some_and(|t| t == "number"))
            {
                assert!(prop.get("maxProperties").is_some(), "{path} has no maxProperties");
            }
        }
    }
}

#[test]
fn every_spec_and_status_field_is_documented() {
    for crd in crds() {
        let schema = schema(&crd);
        let mut all = Vec::new();
        properties(crd.spec.names.kind.clone(), &schema, &mut all);
        let undocumented: Vec<&String> =
            all.iter().filter(|(_, p)| p.get("description").is_none()).map(|(path, _)| path).collect();
        assert!(undocumented.is_empty(), "no description (kubectl explain text): {undocumented:?}");
    }
}

fn filter_run() -> FilterRun {
    let mut fr = FilterRun::new(
        "filter",
        FilterRunSpec {
            distillation_job_ref: Some("students".into()),
            source_group_ref: None,
            method: Method::Mira,
            dsir: None,
            perplexity: None,
            retention: 0.5,
            policy: CutPolicy::Group,
            group_retention: BTreeMap::new(),
            tokens: TokensSpec::default(),
            trim: None,
            histogram_bins: None,
            output: "s3://bucket/kept".into(),
            on_no_reliable_dimension: NoReliableDimension::default(),
            allow_unusable_sources: false,
            job: JobTemplate::default(),
        },
    );
    fr.metadata.namespace = Some("ns".into());
    fr
}

fn source_group() -> SourceGroup {
    SourceGroup::new(
        "corpus",
        SourceGroupSpec {
            storage: StorageSpec::default(),
            root: "s3://bucket/mira".into(),
            sources: vec![SourceSpec {
                name: "web".into(),
                uri: "s3://corpus/web/".into(),
                format: None,
                text: None,
                shard_fraction: None,
            }],
            grouping: GroupingSpec::default(),
            job: JobTemplate::default(),
        },
    )
}

#[test]
fn a_valid_filter_run_passes_its_rules() {
    validate_cel(&filter_run()).unwrap();
}

#[test]
fn retention_must_be_in_zero_to_one() {
    for (retention, ok) in [(1.0, true), (0.01, true), (0.0, false), (-0.5, false), (1.5, false)] {
        let mut fr = filter_run();
        fr.spec.retention = retention;
        assert_eq!(validate_cel(&fr).is_ok(), ok, "retention {retention}");
    }
    let mut fr = filter_run();
    fr.spec.group_retention.insert("code".into(), 1.2);
    assert!(validate_cel(&fr).is_err(), "group retention above 1");
}

#[test]
fn tokens_come_from_a_tokenizer_or_the_teacher_not_both() {
    let mut fr = filter_run();
    fr.spec.tokens.from_teacher = Some(true);
    validate_cel(&fr).unwrap();
    fr.spec.tokens.tokenizer = Some("s3://models/tokenizer.json".into());
    assert!(format!("{:?}", validate_cel(&fr).unwrap_err()).contains("set tokenizer or fromTeacher, not both"));
    fr.spec.tokens.from_teacher = Some(false);
    validate_cel(&fr).unwrap();
}

#[test]
fn group_retention_needs_the_group_policy() {
    let mut fr = filter_run();
    fr.spec.group_retention.insert("code".into(), 0.8);
    validate_cel(&fr).unwrap();
    fr.spec.policy = CutPolicy::Global;
    assert!(validate_cel(&fr).is_err());
}

#[test]
fn a_method_takes_its_own_upstream_and_settings() {
    let mut fr = filter_run();
    fr.spec.method = Method::Random;
    let errors = validate_cel(&fr).unwrap_err();
    assert!(format!("{errors:?}").contains("the baseline methods take sourceGroupRef"), "{errors:?}");
    fr.spec.distillation_job_ref = None;
    fr.spec.source_group_ref = Some("corpus".into());
    validate_cel(&fr).unwrap();
    fr.spec.method = Method::Dsir;
    assert!(format!("{:?}", validate_cel(&fr).unwrap_err()).contains("dsir (the target sample)"));
    fr.spec.dsir = Some(DsirTarget { target: "s3://corpus/reference/".into(), format: None, text: None, sample: None });
    validate_cel(&fr).unwrap();
    fr.spec.method = Method::Perplexity;
    let errors = format!("{:?}", validate_cel(&fr).unwrap_err());
    assert!(errors.contains("dsir (the target sample)") && errors.contains("perplexity (the reference model)"));
    fr.spec.dsir = None;
    let model = LocalModel { uri: "s3://models/ref/".into(), gguf_files: vec![], max_num_seqs: None };
    fr.spec.perplexity = Some(PerplexityModel { model, max_tokens: Some(512) });
    validate_cel(&fr).unwrap();
    fr.spec.method = Method::Mira;
    assert!(validate_cel(&fr).is_err(), "mira takes no sourceGroupRef, nor perplexity");
}

#[test]
fn references_are_immutable() {
    let old = filter_run();
    let mut new = filter_run();
    new.spec.retention = 0.3;
    validate_cel_update(&new, &old).unwrap();
    new.spec.distillation_job_ref = Some("other".into());
    let errors = validate_cel_update(&new, &old).unwrap_err();
    assert!(format!("{errors:?}").contains("distillationJobRef is immutable"), "{errors:?}");
    // Nor can a run switch from one upstream to the other: a rule on each field alone holds only
    // where both the old and the new object have it.
    let mut new = filter_run();
    (new.spec.distillation_job_ref, new.spec.source_group_ref) = (None, Some("corpus".into()));
    new.spec.method = Method::Random;
    let errors = validate_cel_update(&new, &old).unwrap_err();
    assert!(format!("{errors:?}").contains("upstream (distillationJobRef or sourceGroupRef) is immutable"));
}

#[test]
fn source_names_must_be_dns_labels() {
    let mut sg = source_group();
    validate_cel(&sg).unwrap();
    sg.spec.sources[0].name = "Web_Crawl".into();
    assert!(validate_cel(&sg).is_err());
}

#[test]
fn resource_names_longer_than_a_label_value_are_rejected() {
    let mut sg = source_group();
    sg.metadata.name = Some("a".repeat(64));
    assert!(validate_cel(&sg).is_err());
}

#[test]
fn explicit_groups_exclude_k() {
    let mut sg = source_group();
    sg.spec.grouping.k = Some(3);
    validate_cel(&sg).unwrap();
    sg.spec.grouping.groups = Some(vec![GroupSpec { name: "all".into(), sources: vec!["web".into()] }]);
    assert!(validate_cel(&sg).is_err());
}

#[test]
fn a_teacher_is_exactly_one_model() {
    let mut rs = RubricSet::new(
        "rubrics",
        RubricSetSpec {
            source_group_ref: "corpus".into(),
            teacher: ModelSpec {
                local: Some(LocalModel { uri: "s3://models/judge/".into(), gguf_files: vec![], max_num_seqs: None }),
                endpoint: None,
            },
            scale: Scale::default(),
            max_record_tokens: None,
            discovery: DiscoverySpec::default(),
            pinned: Vec::new(),
            job: JobTemplate::default(),
        },
    );
    validate_cel(&rs).unwrap();
    rs.spec.teacher.local = None;
    assert!(validate_cel(&rs).is_err(), "no model");
    rs.spec.scale = Scale { min: 5, max: 1 };
    rs.spec.teacher.endpoint = Some(EndpointModel {
        url: "http://t/v1".into(),
        model: "m".into(),
        api_key_secret: None,
        max_concurrency: None,
    });
    assert!(validate_cel(&rs).is_err(), "inverted scale");
}

#[test]
fn imported_labels_exclude_a_labelling_teacher() {
    let mut dj = DistillationJob::new("students", DistillationJobSpec::new("rubrics"));
    dj.spec.labels.import_uri = Some("s3://labels/".into());
    dj.spec.validation_fraction = Some(0.2);
    validate_cel(&dj).unwrap();
    dj.spec.labels.records_per_group = Some(100);
    assert!(validate_cel(&dj).is_err());
    dj.spec.labels.records_per_group = None;
    dj.spec.validation_fraction = Some(1.0);
    assert!(validate_cel(&dj).is_err());
}

#[test]
fn a_student_is_either_a_judge_or_heads_on_one_featurizer() {
    let mut dj = DistillationJob::new("students", DistillationJobSpec::new("rubrics"));
    let model = LocalModel { uri: "s3://models/m/".into(), gguf_files: Vec::new(), max_num_seqs: None };
    dj.spec.student.featurizer.embedding = Some(EmbeddingFeaturizer { model: model.clone() });
    validate_cel(&dj).unwrap();
    dj.spec.student.featurizer.hashed = Some(HashedFeaturizer::default());
    assert!(validate_cel(&dj).is_err(), "two featurizers");
    dj.spec.student.featurizer = FeaturizerSpec::default();
    dj.spec.student.judge = Some(ModelSpec { local: Some(model.clone()), endpoint: None });
    validate_cel(&dj).unwrap();
    dj.spec.student.featurizer.embedding = Some(EmbeddingFeaturizer { model });
    let errors = validate_cel(&dj).unwrap_err();
    assert!(format!("{errors:?}").contains("set judge or featurizer, not both"), "{errors:?}");
}

fn crd_of(kind: &str) -> CustomResourceDefinition {
    crds().into_iter().find(|c| c.spec.names.kind == kind).unwrap()
}

#[test]
fn bounds_and_name_patterns_hold_where_cel_does_not_run() {
    // API servers before 1.25 ignore `x-kubernetes-validations`; these keywords hold everywhere.
    let spec = &schema(&crd_of("FilterRun"))["properties"]["spec"]["properties"];
    let retention = &spec["retention"];
    assert_eq!((&retention["minimum"], &retention["exclusiveMinimum"]), (&serde_json::json!(0.0), &Value::Bool(true)));
    assert_eq!(retention["maximum"], 1.0);
    assert_eq!(
        (&spec["trim"]["maximum"], &spec["trim"]["exclusiveMaximum"]),
        (&serde_json::json!(0.5), &Value::Bool(true))
    );
    let source_name =
        &schema(&crd_of("SourceGroup"))["properties"]["spec"]["properties"]["sources"]["items"]["properties"]["name"];
    assert_eq!(source_name["pattern"], DNS_LABEL_PATTERN);
    assert_eq!(format!("self.matches('{DNS_LABEL_PATTERN}')"), DNS_LABEL_RULE, "the pattern and the CEL rule agree");
}

/// Every value under `key` anywhere in a schema.
fn all_of_key<'a>(schema: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match schema {
        Value::Object(map) => {
            out.extend(map.get(key));
            map.values().for_each(|v| all_of_key(v, key, out));
        }
        Value::Array(items) => items.iter().for_each(|v| all_of_key(v, key, out)),
        _ => {}
    }
}

#[test]
fn the_crds_are_accepted_by_older_api_servers_and_yaml_1_1_parsers() {
    for crd in crds() {
        let schema = schema(&crd);
        let mut enums = Vec::new();
        all_of_key(&schema, "enum", &mut enums);
        assert!(
            enums.iter().all(|e| !e.as_array().unwrap().contains(&Value::Null)),
            "API servers before 1.22 reject null in an enum"
        );
        // kubectl and Helm read YAML 1.1, where a bare `n`, `y`, `no`, `on`... is a boolean.
        let mut props = Vec::new();
        properties(crd.spec.names.kind.clone(), &schema, &mut props);
        for (path, _) in props {
            let name = path.rsplit('.').next().unwrap();
            let yaml_1_1_bool =
                ["y", "n", "yes", "no", "on", "off", "true", "false"].contains(&name.to_lowercase().as_str());
            assert!(!yaml_1_1_bool, "{path}: a YAML 1.1 boolean as a field name");
        }
    }
}

/// Statuses an earlier version wrote, with lists where counts are now, stay readable.
#[test]
fn statuses_written_before_the_counts_read_as_counts() {
    let rubrics: RubricSetStatus = serde_json::from_value(serde_json::json!({
        "groups": [{"name": "code", "pinned": false, "dimensions": [{"id": "a"}, {"id": "b"}]}]
    }))
    .unwrap();
    assert_eq!(rubrics.groups[0].dimensions, 2);
    let students: DistillationJobStatus = serde_json::from_value(serde_json::json!({
        "students": [{"group": "code", "student": "s", "trainRecords": 1, "validationRecords": 1,
                      "dimensions": ["a", "b", "c"], "sources": 2, "masked": [{"source": "web", "dimensions": ["a"]}]}]
    }))
    .unwrap();
    assert_eq!((students.students[0].dimensions, students.students[0].masked), (3, 1));
    let now: DistillationJobStatus = serde_json::from_value(serde_json::json!({
        "students": [{"group": "code", "student": "s", "trainRecords": 1, "validationRecords": 1, "dimensions": 3, "masked": 0}]
    }))
    .unwrap();
    assert_eq!(now.students[0].dimensions, 3);
}
