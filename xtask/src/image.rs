//! `cargo xtask image <app>`: an appliance as an OCI image tarball (an OCI
//! image layout in a tar, what `ctr images import`, `podman load` and
//! `skopeo` read) — no registry, no Docker.
//!
//! One uncompressed layer holds `/appliance.elf` (an app's files are baked
//! into its ELF, so there is nothing else to carry); the config's
//! `Entrypoint` is `["/appliance.elf"]`, `Cmd` the default guest
//! arguments, and its environment marks the image for `torito-oci`
//! (`TORITO_APPLIANCE=1`) and gives guest RAM (`TORITO_MEM`). The tarball
//! is reproducible: fixed times, owners and order.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder, Sha256Digest,
};
use sha2::{Digest as _, Sha256};

use crate::Result;

/// The path of the ELF in the image.
pub const ELF_PATH: &str = "/appliance.elf";

/// What goes into an image.
#[derive(Debug, Clone)]
pub struct ImageSpec<'a> {
    /// Its name, e.g. `docker.io/torito/hello:latest`.
    pub name: &'a str,
    /// The layer's files: path in the image and bytes (executable).
    pub files: Vec<(&'a str, &'a [u8])>,
    /// The config's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The config's `Cmd` (for an appliance: the default guest arguments).
    pub cmd: Vec<String>,
    /// The config's `Env`.
    pub env: Vec<String>,
}

impl<'a> ImageSpec<'a> {
    /// An appliance: `elf` at [`ELF_PATH`] (`None`: an image without it,
    /// for tests of what the runtime says then), marked for `torito-oci`,
    /// with guest RAM `mem` (e.g. `128M`).
    pub fn appliance(name: &'a str, elf: Option<&'a [u8]>, cmd: &[String], mem: &str) -> Self {
        ImageSpec {
            name,
            files: elf.map(|e| (ELF_PATH, e)).into_iter().collect(),
            entrypoint: vec![ELF_PATH.to_string()],
            cmd: cmd.to_vec(),
            env: vec!["TORITO_APPLIANCE=1".to_string(), format!("TORITO_MEM={mem}")],
        }
    }
}

/// The fully qualified name of an app's image: `docker.io/torito/<app>:latest`.
pub fn default_name(app: &str) -> String {
    format!("docker.io/torito/{app}:latest")
}

/// Write the image tarball of `spec` to `out`.
pub fn write(spec: &ImageSpec, out: &Path) -> Result<()> {
    let tarball = tarball(spec)?;
    let tmp = out.with_extension("tar.new");
    std::fs::write(&tmp, tarball).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, out).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

/// `sha256:<hex>` of `bytes`, as a descriptor of `media_type`.
fn blob(media_type: MediaType, bytes: &[u8]) -> Result<(Descriptor, String)> {
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    let digest: Sha256Digest = hex.parse().map_err(|e| format!("digest: {e}"))?;
    Ok((Descriptor::new(media_type, bytes.len() as u64, digest), hex))
}

/// A tar of `files` (path, mode, bytes), reproducible.
fn tar_of(files: &[(&str, u32, &[u8])]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    for (path, mode, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *bytes).map_err(|e| format!("tar {path}: {e}"))?;
    }
    b.into_inner().map_err(|e| format!("tar: {e}"))
}

/// The image tarball's bytes.
pub fn tarball(spec: &ImageSpec) -> Result<Vec<u8>> {
    let err = |e: oci_spec::OciSpecError| format!("image: {e}");
    let files: Vec<(&str, u32, &[u8])> =
        spec.files.iter().map(|(p, b)| (p.trim_start_matches('/'), 0o755, *b)).collect();
    let layer = tar_of(&files)?;
    let (layer_desc, layer_hex) = blob(MediaType::ImageLayer, &layer)?;
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .entrypoint(spec.entrypoint.clone())
                .cmd(spec.cmd.clone())
                .env(spec.env.clone())
                .working_dir("/".to_string())
                .build()
                .map_err(err)?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers".to_string())
                .diff_ids(vec![format!("sha256:{layer_hex}")])
                .build()
                .map_err(err)?,
        )
        .build()
        .map_err(err)?;
    let config_json = config.to_string().map_err(err)?.into_bytes();
    let (config_desc, config_hex) = blob(MediaType::ImageConfig, &config_json)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(vec![layer_desc])
        .build()
        .map_err(err)?;
    let manifest_json = manifest.to_string().map_err(err)?.into_bytes();
    let (manifest_desc, manifest_hex) = blob(MediaType::ImageManifest, &manifest_json)?;
    let tag = spec.name.rsplit_once(':').map(|(_, t)| t).filter(|t| !t.contains('/')).unwrap_or("latest");
    let annotations = HashMap::from([
        ("io.containerd.image.name".to_string(), spec.name.to_string()),
        ("org.opencontainers.image.ref.name".to_string(), tag.to_string()),
    ]);
    let platform = PlatformBuilder::default().architecture(Arch::Amd64).os(Os::Linux).build().map_err(err)?;
    let index_entry = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .size(manifest_desc.size())
        .digest(manifest_desc.digest().clone())
        .annotations(annotations)
        .platform(platform)
        .build()
        .map_err(err)?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![index_entry])
        .build()
        .map_err(err)?;
    // oci-spec keeps annotations in a HashMap, whose order changes from
    // run to run: sorted here, so that the same input gives the same bytes.
    let mut index_value = serde_json::to_value(&index).map_err(|e| format!("index: {e}"))?;
    if let Some(manifests) = index_value["manifests"].as_array_mut() {
        for m in manifests {
            if let Some(a) = m["annotations"].as_object() {
                let sorted: std::collections::BTreeMap<String, serde_json::Value> =
                    a.clone().into_iter().collect();
                m["annotations"] = serde_json::to_value(sorted).map_err(|e| format!("index: {e}"))?;
            }
        }
    }
    let index_json = serde_json::to_vec(&index_value).map_err(|e| format!("index: {e}"))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let (l, c, m) = (
        format!("blobs/sha256/{layer_hex}"),
        format!("blobs/sha256/{config_hex}"),
        format!("blobs/sha256/{manifest_hex}"),
    );
    let mut out = tar_of(&[
        ("oci-layout", 0o644, layout),
        ("index.json", 0o644, &index_json),
        (&m, 0o644, &manifest_json),
        (&c, 0o644, &config_json),
        (&l, 0o644, &layer),
    ])?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The tarball's files by path.
    fn files(tarball: &[u8]) -> HashMap<String, Vec<u8>> {
        let mut a = tar::Archive::new(tarball);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), v)
            })
            .collect()
    }

    #[test]
    fn an_image_layout_whose_digests_hold() {
        let cmd = vec!["a".to_string(), "b".to_string()];
        let spec = ImageSpec::appliance("docker.io/torito/x:latest", Some(b"\x7fELF fake"), &cmd, "64M");
        let t = tarball(&spec).unwrap();
        for _ in 0..20 {
            assert_eq!(t, tarball(&spec).unwrap(), "reproducible");
        }
        let f = files(&t);
        for (path, bytes) in &f {
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                let got: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(&got, hex, "{path}");
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&f["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["io.containerd.image.name"], "docker.io/torito/x:latest");
        assert_eq!(m["platform"]["architecture"], "amd64");
        let digest = m["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&f[&format!("blobs/sha256/{digest}")]).unwrap();
        let config_digest = manifest["config"]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&f[&format!("blobs/sha256/{config_digest}")]).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/appliance.elf");
        assert_eq!(config["config"]["Cmd"][1], "b");
        assert!(config["config"]["Env"].as_array().unwrap().iter().any(|e| e == "TORITO_APPLIANCE=1"));
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
        let layer = files(&f[&format!("blobs/sha256/{layer_digest}")]);
        assert_eq!(layer["appliance.elf"], b"\x7fELF fake");
        assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{layer_digest}"));
    }
}
