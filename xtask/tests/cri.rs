//! torito-oci as the kubelet drives it: containerd's CRI plugin with a
//! runtime handler `torito` (`runtime_type = "io.containerd.runc.v2"`,
//! `BinaryName` = torito-oci), a CNI bridge network, and a CRI client
//! speaking gRPC on containerd's socket (crictl is not packaged in Debian).
//! The pod's pause container runs under runc (handed over), the echo
//! appliance answers on the pod's IP from the host, its output is in the
//! CRI log, StopContainer gives 143; a hostNetwork pod leaves the host's
//! interfaces, addresses and qdiscs as they were.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest,
    ImageSpec as CriImage, LinuxContainerConfig, LinuxContainerResources, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListImagesRequest, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};
use xtask::Variant;
use xtask::containerd::{Containerd, Cri};
use xtask::image::ImageSpec;

const BRIDGE: &str = "torito-cni0";
const SUBNET: &str = "10.0.4.0/24";
const PAUSE: &str = "docker.io/torito/pause:latest";

/// The CNI bridge is removed and `ip_forward` (the bridge plugin turns it
/// on for a gateway) restored when this is dropped.
struct HostGuard {
    ip_forward: String,
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).stderr(Stdio::null()).status();
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.ip_forward);
    }
}

/// A pause image made from the host's `sleep` and the libraries it needs
/// (no registry here): `sleep infinity`, killed when the pod stops.
fn pause_image<'a>(files: &'a mut Vec<(String, Vec<u8>)>) -> ImageSpec<'a> {
    let ldd = Command::new("ldd").arg("/bin/sleep").output().expect("ldd");
    let libs: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(str::to_string)
        .collect();
    for path in std::iter::once("/bin/sleep".to_string()).chain(libs) {
        files.push((path.clone(), std::fs::read(&path).unwrap()));
    }
    ImageSpec {
        name: PAUSE,
        files: files.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect(),
        entrypoint: vec!["/bin/sleep".into()],
        cmd: vec!["infinity".into()],
        env: vec![],
    }
}

async fn connect(sock: &Path) -> Channel {
    let sock = sock.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?)) }
        }))
        .await
        .expect("connect to containerd's CRI")
}

fn pod_config(name: &str, logs: &Path, network: NamespaceMode) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        // A hostNetwork pod shares the host's UTS namespace: no hostname.
        hostname: if network == NamespaceMode::Node { String::new() } else { name.into() },
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption { network: network as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, image: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(CriImage { image: image.into(), ..Default::default() }),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 128 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The host namespace's links (names and flags), addresses and qdiscs.
fn host_network() -> String {
    let run = |args: &[&str]| {
        let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let links = run(&["ip", "-o", "link", "show"]);
    let links: Vec<&str> = links.lines().map(|l| l.split(" link/").next().unwrap_or(l)).collect();
    format!("{}\n{}\n{}", links.join("\n"), run(&["ip", "-o", "addr", "show"]), run(&["tc", "qdisc", "show"]))
}

/// nc from the host to `ip:7`; what came back.
fn echo_from_host(ip: &str, sent: &[u8]) -> Vec<u8> {
    let mut nc = Command::new("nc")
        .args(["-N", "-w", "3", ip, "7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    let _ = nc.stdin.take().unwrap().write_all(sent);
    nc.wait_with_output().unwrap().stdout
}

#[test]
fn cri_pods_run_appliances_with_runtime_handler_torito() {
    if !xtask::testing::need("nc") {
        return;
    }
    let oci = xtask::build_oci(true).unwrap();
    let cri =
        Cri { oci: oci.clone(), pause_image: PAUSE.into(), bridge: BRIDGE.into(), subnet: SUBNET.into() };
    let ip_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_else(|_| "0".into());
    let _host = HostGuard { ip_forward };
    let Some(c) = Containerd::or_skip_with("cri", Some(&cri)) else { return };
    let dir: PathBuf = c.dir().join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let import = |spec: &ImageSpec| {
        let t = dir.join(format!("{}.tar", spec.name.replace(['/', ':'], "_")));
        xtask::image::write(spec, &t).unwrap();
        c.import(&t);
    };
    let mut pause_files = Vec::new();
    import(&pause_image(&mut pause_files));
    let echo = std::fs::read(xtask::build("echo", Variant::default()).unwrap()).unwrap();
    let hello = std::fs::read(xtask::build("hello", Variant::default()).unwrap()).unwrap();
    import(&ImageSpec::appliance("docker.io/torito/echo:latest", Some(&echo), &["port=7".into()], "64M"));
    import(&ImageSpec::appliance("docker.io/torito/hello:latest", Some(&hello), &[], "64M"));
    let logs = c.dir().join("pods");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = connect(c.socket()).await;
        let mut rs = RuntimeServiceClient::new(channel.clone());
        let mut is = ImageServiceClient::new(channel);
        let images = is.list_images(ListImagesRequest::default()).await.unwrap().into_inner().images;
        assert!(images.iter().any(|i| i.repo_tags.iter().any(|t| t == PAUSE)), "images: {images:?}");

        // A hostNetwork pod: hello, then the host's network as it was.
        let before = host_network();
        let host_logs = logs.join("host");
        std::fs::create_dir_all(&host_logs).unwrap();
        let config = pod_config("host", &host_logs, NamespaceMode::Node);
        let pod = rs
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: "torito".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox (hostNetwork): {e}\n{}", c.log()))
            .into_inner()
            .pod_sandbox_id;
        let id = rs
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("hello", "docker.io/torito/hello:latest")),
                sandbox_config: Some(config),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log()))
            .into_inner()
            .container_id;
        rs.start_container(StartContainerRequest { container_id: id.clone() })
            .await
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log()));
        let mut status = None;
        for _ in 0..300 {
            let s = rs
                .container_status(ContainerStatusRequest { container_id: id.clone(), verbose: false })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            if s.finished_at != 0 {
                status = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = status.expect("hello ended");
        assert_eq!(status.exit_code, 0, "{status:?}");
        let log = std::fs::read_to_string(host_logs.join("hello.log")).unwrap_or_default();
        assert!(log.contains(" stdout F Hello from Torito!"), "the CRI log: {log}");
        rs.remove_container(RemoveContainerRequest { container_id: id }).await.unwrap();
        rs.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
        rs.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
        assert_eq!(host_network(), before, "a hostNetwork pod changed the host's network");

        // A pod on the CNI bridge: the echo appliance on the pod's IP.
        let pod_logs = logs.join("echo");
        std::fs::create_dir_all(&pod_logs).unwrap();
        let config = pod_config("echo", &pod_logs, NamespaceMode::Pod);
        let pod = rs
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: "torito".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()))
            .into_inner()
            .pod_sandbox_id;
        let ip = rs
            .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
            .await
            .unwrap()
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        assert!(ip.starts_with("10.0.4."), "the pod's IP: {ip:?}");
        let id = rs
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("echo", "docker.io/torito/echo:latest")),
                sandbox_config: Some(config),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log()))
            .into_inner()
            .container_id;
        rs.start_container(StartContainerRequest { container_id: id.clone() })
            .await
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log()));
        let sent = b"pod to appliance, through CRI\n";
        let mut back = Vec::new();
        for _ in 0..30 {
            back = echo_from_host(&ip, sent);
            if back == sent {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(String::from_utf8_lossy(&back), String::from_utf8_lossy(sent), "echo from {ip}:7");
        let log = std::fs::read_to_string(pod_logs.join("echo.log")).unwrap_or_default();
        assert!(log.contains("stdout F echo: listening on port 7"), "the CRI log: {log}");
        rs.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 10 }).await.unwrap();
        let s = rs
            .container_status(ContainerStatusRequest { container_id: id.clone(), verbose: false })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(s.exit_code, 143, "StopContainer: SIGTERM, the monitor's 143: {s:?}");
        rs.remove_container(RemoveContainerRequest { container_id: id }).await.unwrap();
        rs.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
        rs.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
}
