//! The malformed-config corpus: every file in `tests/configs/bad/` makes `bearerd check`
//! exit 2 with exactly the located message in its `.err` file (`{file}` stands for its path, `{dir}` for
//! the corpus directory).

use std::path::Path;

use crate::harness::{BEARERD, text};

#[test]
fn every_bad_config_is_rejected_with_its_located_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/bad");
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    entries.sort();
    for config in entries {
        let expected_path = config.with_extension("err");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} has no .err file", config.display()))
            .replace("{file}", &config.display().to_string())
            .replace("{dir}", &dir.display().to_string());
        let output = std::process::Command::new(BEARERD)
            .args(["check", "-c"])
            .arg(&config)
            .env_remove("BEARERD_CONFIG")
            .env_remove("BEARERD_TEST_SURELY_UNSET")
            .output()
            .expect("run bearerd");
        let stderr = text(&output.stderr);
        if output.status.code() != Some(2) || stderr != expected || !output.stdout.is_empty() {
            failures.push(format!(
                "{}: exit {:?}\n--- expected\n{expected}--- got\n{stderr}",
                config.display(),
                output.status.code()
            ));
        }
        checked += 1;
    }
    assert!(checked >= 25, "the corpus has {checked} configs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
