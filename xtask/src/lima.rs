//! The Lima template for macOS laptops (`contrib/lima/listen-trace.yaml`), checked as far as a Linux
//! machine can: the YAML parses, it has an image for each of x86-64 and arm64 and a writable mount,
//! and its provisioning scripts run here (the system one installs what is missing; the user one ends
//! with `cargo xtask setup`, the set-up CI runs).
//!
//! The same two scripts make the cloud-init file for fallback VMs in a cloud
//! (`contrib/cloud-init/listen-trace.yaml`, written by `cargo xtask cloud-init`), which the tests
//! hold to the template and validate with cloud-init's own schema check.

use std::process::Command;

use anyhow::{Context as _, bail};
use yaml_rust2::{Yaml, YamlLoader};

use crate::{
    host_packages::{self, CLOUD_INIT},
    pinned::run_step,
    workspace_root,
};

/// The template, from the workspace root.
pub const TEMPLATE: &str = "contrib/lima/listen-trace.yaml";
/// The cloud-init user data made from it, from the workspace root.
pub const CLOUD_INIT_FILE: &str = "contrib/cloud-init/listen-trace.yaml";
/// Where the cloud-init file puts the template's scripts, and the file a teacher edits.
const SYSTEM_SCRIPT: &str = "/usr/local/lib/listen-trace/provision-system.sh";
const USER_SCRIPT: &str = "/usr/local/lib/listen-trace/provision-user.sh";
const SETTINGS: &str = "/etc/listen-trace.env";

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

/// `cargo xtask cloud-init`: writes the cloud-init file from the template's scripts.
pub fn write_cloud_init() -> anyhow::Result<()> {
    let root = workspace_root();
    let text = cloud_init_text(&std::fs::read_to_string(root.join(TEMPLATE))?)?;
    let path = root.join(CLOUD_INIT_FILE);
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, text)?;
    eprintln!("wrote {CLOUD_INIT_FILE} from {TEMPLATE}");
    Ok(())
}

/// The cloud-init file is what `cargo xtask cloud-init` writes from the template today, and
/// cloud-init's schema check (Debian's `cloud-init` package) accepts it.
pub fn check_cloud_init() -> anyhow::Result<()> {
    eprintln!("==> the cloud-init file for fallback VMs ({CLOUD_INIT_FILE})");
    let root = workspace_root();
    let wanted = cloud_init_text(&std::fs::read_to_string(root.join(TEMPLATE))?)?;
    let present = std::fs::read_to_string(root.join(CLOUD_INIT_FILE)).unwrap_or_default();
    if present != wanted {
        bail!(
            "{CLOUD_INIT_FILE} is not what the Lima template makes: run `cargo xtask cloud-init` \
             and commit the result"
        );
    }
    eprintln!("    it runs the Lima template's two provisioning scripts, unchanged");
    host_packages::ensure("the cloud-init schema check", &[CLOUD_INIT])?;
    run_step(
        "cloud-init schema --config-file (the cloud-init file)",
        Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(root.join(CLOUD_INIT_FILE)),
    )
}

/// cloud-init user data that writes the template's scripts and runs them at the first boot: the
/// system one as root, the user one as the image's default user (uid 1000), with the settings
/// file's variables (`LISTEN_TRACE_GIT`: where to clone the repository from).
fn cloud_init_text(template: &str) -> anyhow::Result<String> {
    let scripts = provisioning(template)?;
    let block = |script: &str| -> String {
        script
            .lines()
            .map(|line| {
                if line.is_empty() {
                    String::new()
                } else {
                    format!("      {line}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(format!(
        r#"#cloud-config
# A fallback virtual machine for the listen-trace lessons, from any cloud or hypervisor that reads
# cloud-init user data: Ubuntu 24.04 (x86-64 or arm64) is what the Lima template boots too.
#
# Written by `cargo xtask cloud-init` from {TEMPLATE}: the first boot runs that
# template's two provisioning scripts, the system one as root and the user one as the image's
# default user (uid 1000: ubuntu, debian, ...). Edit the template, not this file.
#
# Before you use it, set LISTEN_TRACE_GIT below to where learners clone the repository from. Left
# empty, copy the repository to ~/listen-trace of the default user yourself and run
# `cargo xtask setup` there. The first boot takes 10 to 15 minutes; its progress is in
# /var/log/cloud-init-output.log. Then: ssh in, `cd ~/listen-trace && cargo xtask doctor`.
write_files:
  - path: {SETTINGS}
    permissions: "0644"
    content: |
      LISTEN_TRACE_GIT=
  - path: {SYSTEM_SCRIPT}
    permissions: "0755"
    content: |
{system}
  - path: {USER_SCRIPT}
    permissions: "0755"
    content: |
{user}
runcmd:
  - [bash, {SYSTEM_SCRIPT}]
  - |
    su - "$(id -nu 1000)" -c 'set -a && . {SETTINGS} && set +a && bash {USER_SCRIPT}'
"#,
        system = block(&scripts[0].1),
        user = block(&scripts[1].1),
    ))
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

    /// The cloud-init file carries the template's scripts byte for byte, where its commands run them.
    #[test]
    fn the_cloud_init_file_writes_the_templates_scripts_and_runs_them() {
        let template = std::fs::read_to_string(workspace_root().join(TEMPLATE)).unwrap();
        let text = cloud_init_text(&template).unwrap();
        assert!(text.starts_with("#cloud-config\n"));
        let config = &YamlLoader::load_from_str(&text).unwrap()[0];
        let files = config["write_files"].as_vec().unwrap();
        let content_of = |path: &str| {
            files
                .iter()
                .find(|file| file["path"].as_str() == Some(path))
                .and_then(|file| file["content"].as_str())
                .unwrap()
                .to_string()
        };
        let scripts = provisioning(&template).unwrap();
        assert_eq!(content_of(SYSTEM_SCRIPT), scripts[0].1);
        assert_eq!(content_of(USER_SCRIPT), scripts[1].1);
        assert_eq!(content_of(SETTINGS), "LISTEN_TRACE_GIT=\n");
        let commands = format!("{:?}", config["runcmd"]);
        for path in [SYSTEM_SCRIPT, USER_SCRIPT, SETTINGS] {
            assert!(commands.contains(path), "runcmd does not use {path}");
        }
    }
}
