//! The rubrics a label or distill plan names by reference ([`RubricsRef`]), resolved to the
//! dimensions of each of its groups before the step runs.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::plan::{rubrics_digest, Dimension, DiscoverResult, GroupRubric, RubricsRef};
use crate::storage::Storage;

/// Every group's dimensions: the pinned ones as given, the discovered ones from the discover
/// stage's result; refused unless their digest is the one the reference gives.
pub async fn resolve(storage: &Storage, rubrics: &RubricsRef) -> Result<BTreeMap<String, Vec<Dimension>>> {
    let mut groups: Vec<GroupRubric> = rubrics.pinned.clone();
    if let Some(uri) = &rubrics.discovered {
        let discovered: DiscoverResult = storage.get_json(uri).await?;
        groups.extend(discovered.groups);
    }
    let found = rubrics_digest(&groups);
    if found != rubrics.sha256 {
        return Err(Error::plan(format!(
            "the rubrics read ({} groups) have SHA-256 {found}, not the {} the plan gives: the discover result \
             changed after the RubricSet summarised it",
            groups.len(),
            rubrics.sha256
        )));
    }
    Ok(groups.into_iter().map(|g| (g.name, g.dimensions.into_iter().map(|d| d.dimension).collect())).collect())
}

/// Gives each plan group its dimensions from the rubrics `reference` names, if the plan has one;
/// a group with dimensions both inline and by reference, or in neither, is refused.
pub async fn fill<'g>(
    storage: &Storage,
    reference: Option<&RubricsRef>,
    groups: impl IntoIterator<Item = (&'g String, &'g mut Vec<Dimension>)>,
) -> Result<()> {
    let Some(reference) = reference else { return Ok(()) };
    let resolved = resolve(storage, reference).await?;
    for (group, dimensions) in groups {
        if !dimensions.is_empty() {
            return Err(Error::plan(format!("group {group:?} has dimensions both inline and by reference")));
        }
        *dimensions = resolved
            .get(group)
            .cloned()
            .ok_or_else(|| Error::plan(format!("the plan's rubrics have no group {group:?}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{AnchoredDimension, StorageConfig};
    use crate::steps::RESULT;
    use crate::storage::join;

    fn rubric(name: &str, id: &str) -> GroupRubric {
        let dimension =
            Dimension { id: id.into(), name: id.into(), description: String::new(), guide: "1 bad, 5 good".into() };
        GroupRubric {
            name: name.into(),
            pinned: false,
            dimensions: vec![AnchoredDimension { dimension, support: Some(3) }],
            proposals: None,
        }
    }

    #[tokio::test]
    async fn discovered_and_pinned_rubrics_resolve_with_their_guides_and_changed_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().display().to_string();
        let storage = Storage::new(StorageConfig::default());
        let discovered = DiscoverResult { groups: vec![rubric("web", "clarity")] };
        storage.put_json(&join(&output, RESULT), &discovered).await.unwrap();
        let mut pinned = rubric("code", "tests");
        pinned.pinned = true;
        let all = vec![pinned.clone(), rubric("web", "clarity")];
        let reference =
            RubricsRef { discovered: Some(join(&output, RESULT)), pinned: vec![pinned], sha256: rubrics_digest(&all) };

        let resolved = resolve(&storage, &reference).await.unwrap();
        assert_eq!(resolved.keys().collect::<Vec<_>>(), ["code", "web"]);
        assert_eq!(resolved["web"][0].guide, "1 bad, 5 good");
        let (code, web, math) = (String::from("code"), String::from("web"), String::from("math"));
        let (mut for_code, mut for_web) = (Vec::new(), Vec::new());
        fill(&storage, Some(&reference), [(&code, &mut for_code), (&web, &mut for_web)]).await.unwrap();
        assert_eq!((for_code[0].id.as_str(), for_web[0].id.as_str()), ("tests", "clarity"));
        let twice = fill(&storage, Some(&reference), [(&code, &mut for_code)]).await;
        assert!(twice.is_err(), "inline and by reference");
        assert!(
            fill(&storage, Some(&reference), [(&math, &mut Vec::new())]).await.is_err(),
            "a group the rubrics lack"
        );

        let changed = DiscoverResult { groups: vec![rubric("web", "brevity")] };
        storage.put_json(&join(&output, RESULT), &changed).await.unwrap();
        let error = resolve(&storage, &reference).await.unwrap_err().to_string();
        assert!(error.contains("changed after the RubricSet summarised it"), "{error}");
    }
}
