//! What an SRE does by hand: a shell loop of `kubectl patch`, one per target.

use mail_incident_e2e_support::world::World;
use std::{
    process::Command,
    time::{Duration, Instant},
};

/// The `kubectl patch` loop is one kubectl process per target, one after the other (what
/// a shell loop does): 50 to 100 ms each on a 2-core machine, so at 5000 targets it would
/// run for five to ten minutes and tell nothing new. Above this size it runs on the first
/// `KUBECTL_LOOP_SAMPLE` targets only and the table shows that time extrapolated
/// linearly to the size (each patch is independent, so linear is what a full run gives).
const KUBECTL_LOOP_MAX: usize = 1000;
const KUBECTL_LOOP_SAMPLE: usize = 100;

/// The loop over every target, or (above [`KUBECTL_LOOP_MAX`]) over a sample, extrapolated;
/// with the sample's size when it was one.
pub fn by_hand(world: &World, namespace: &str, size: usize) -> (Duration, Option<usize>) {
    if size > KUBECTL_LOOP_MAX {
        let sample = KUBECTL_LOOP_SAMPLE.min(size);
        let elapsed = kubectl_patch_loop(world, namespace, sample);
        (elapsed.mul_f64(size as f64 / sample as f64), Some(sample))
    } else {
        (kubectl_patch_loop(world, namespace, size), None)
    }
}

/// What an SRE does by hand: one `kubectl patch` per target, one after the other, here
/// over the first `count` targets.
fn kubectl_patch_loop(world: &World, namespace: &str, count: usize) -> Duration {
    let start = Instant::now();
    for i in 0..count {
        let status = Command::new(&world.kubectl)
            .arg("--kubeconfig")
            .arg(&world.kubeconfig)
            .args([
                "-n",
                namespace,
                "patch",
                "configmap",
                &format!("manual-{i:04}"),
                "--type",
                "merge",
            ])
            .args(["-p", r#"{"data":{"mode":"HardReject"}}"#])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("kubectl runs");
        assert!(status.success());
    }
    start.elapsed()
}
