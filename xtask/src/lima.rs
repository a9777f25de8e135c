//! The Lima template for macOS laptops (`contrib/lima/listen-trace.yaml`), checked as far as a Linux
//! machine can: the YAML parses, it has an image for each of x86-64 and arm64 and a writable mount,
//! and its provisioning scripts run here (the system one installs what is missing; the user one ends
//! with `cargo xtask setup`, the set-up CI runs).

use std::process::Command;

use anyhow::{Context as _, bail};
use yaml_rust2::{Yaml, YamlLoader};

use crate::{pinned::run_step, workspace_root};

/// The template, from the workspace root.
pub const TEMPLATE: &str = "contrib/lima/listen-trace.yaml";

pub fn check_template() -> anyhow::Result<()> {
    eprintln!("==> the Lima template ({TEMPLATE})");
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join(TEMPLATE))?;
    for (mode, script) in provisioning(&text)? {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(&script)
            .env("LISTEN_TRACE_DIR", &root);
        run_step(
            &format!("the template's {mode} provisioning, here"),
            &mut command,
        )?;
    }
    Ok(())
}

/// Checks the template's shape and returns its provisioning scripts with their modes, in order.
fn provisioning(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let documents =
        YamlLoader::load_from_str(text).context("the Lima template is not valid YAML")?;
    let template = documents.first().context("the Lima template is empty")?;
    let arches: Vec<&str> = template["images"]
        .as_vec()
        .context("no images")?
        .iter()
        .filter_map(|image| image["arch"].as_str())
        .collect();
    for wanted in ["x86_64", "aarch64"] {
        if !arches.contains(&wanted) {
            bail!("the Lima template has no {wanted} image");
        }
    }
    let mounts = template["mounts"].as_vec().context("no mounts")?;
    if !mounts
        .iter()
        .any(|mount| mount["writable"] == Yaml::Boolean(true))
    {
        bail!(
            "the Lima template mounts nothing writable: learners edit the repository on the host"
        );
    }
    let scripts: Vec<(String, String)> = template["provision"]
        .as_vec()
        .context("no provision scripts")?
        .iter()
        .filter_map(|step| {
            Some((
                step["mode"].as_str()?.to_string(),
                step["script"].as_str()?.to_string(),
            ))
        })
        .collect();
    let modes: Vec<&str> = scripts.iter().map(|(mode, _)| mode.as_str()).collect();
    if modes != ["system", "user"] {
        bail!(
            "the Lima template's provisioning should be a system script, then a user script: {modes:?}"
        );
    }
    if !scripts[1].1.contains("cargo xtask setup") {
        bail!("the Lima template's user script does not run `cargo xtask setup`");
    }
    Ok(scripts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_has_both_architectures_a_writable_mount_and_valid_scripts() {
        let text = std::fs::read_to_string(workspace_root().join(TEMPLATE)).unwrap();
        for (mode, script) in provisioning(&text).unwrap() {
            let status = Command::new("bash")
                .args(["-n", "-c", &script])
                .status()
                .unwrap();
            assert!(status.success(), "the {mode} script is not valid bash");
        }
        assert!(
            provisioning("images: []\n")
                .unwrap_err()
                .to_string()
                .contains("no x86_64 image")
        );
    }
}
