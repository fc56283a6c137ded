//! Each step's exercises say which one fits the workshop: exactly one is marked
//! `**(in the workshop)**`, sized to its part of the schedule (the top README's "How the
//! workshop runs"); every other one `**(homework)**`. A new exercise without a mark, or a
//! second one marked for the room, fails here.

use std::path::Path;

const IN_THE_WORKSHOP: &str = "**(in the workshop)**";
const HOMEWORK: &str = "**(homework)**";

/// The numbered items of a README's `## Exercises` section: (number, text after it).
fn exercises(readme: &str) -> Vec<(u32, &str)> {
    let Some(start) = readme.find("\n## Exercises\n") else {
        return Vec::new();
    };
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    section
        .lines()
        .filter_map(|line| {
            let (number, rest) = line.split_once(". ")?;
            Some((number.parse().ok()?, rest))
        })
        .collect()
}

/// What is wrong with a README's marks, one line each.
fn wrong_marks(readme: &str) -> Vec<String> {
    let items = exercises(readme);
    if items.is_empty() {
        return vec!["no numbered exercises under `## Exercises`".to_string()];
    }
    let mut wrong: Vec<String> = items
        .iter()
        .filter(|(_, text)| !text.starts_with(IN_THE_WORKSHOP) && !text.starts_with(HOMEWORK))
        .map(|(n, _)| format!("exercise {n} starts with neither {IN_THE_WORKSHOP} nor {HOMEWORK}"))
        .collect();
    let in_the_room = items
        .iter()
        .filter(|(_, text)| text.starts_with(IN_THE_WORKSHOP))
        .count();
    if in_the_room != 1 {
        wrong.push(format!(
            "{in_the_room} exercises marked {IN_THE_WORKSHOP}: exactly one fits the room"
        ));
    }
    wrong
}

/// Every step README marks exactly one exercise for the workshop, the rest as homework.
#[test]
fn each_step_marks_one_exercise_for_the_workshop() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut steps: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step0"))
        })
        .collect();
    steps.sort();
    assert!(steps.len() >= 9, "found {} steps", steps.len());
    let mut wrong = Vec::new();
    for step in steps {
        let readme = std::fs::read_to_string(step.join("README.md")).unwrap();
        let name = step.file_name().unwrap().to_string_lossy().into_owned();
        wrong.extend(
            wrong_marks(&readme)
                .into_iter()
                .map(|w| format!("{name}: {w}")),
        );
    }
    assert!(wrong.is_empty(), "exercise marks:\n{}", wrong.join("\n"));
}

/// The checker itself.
#[test]
fn marks_are_read_strictly() {
    let readme = |items: &str| format!("# Step\n\n## Exercises\n\n{items}\n## Checklist\n\n1. x\n");
    assert!(
        wrong_marks(&readme(
            "1. **(homework)** a\n   more\n2. **(in the workshop)** b\n"
        ))
        .is_empty()
    );
    assert_eq!(wrong_marks(&readme("1. **(homework)** a\n2. b\n")).len(), 2);
    assert_eq!(
        wrong_marks(&readme(
            "1. **(in the workshop)** a\n2. **(in the workshop)** b\n"
        ))
        .len(),
        1
    );
    assert_eq!(wrong_marks("# Step\n\nno exercises\n").len(), 1);
}
