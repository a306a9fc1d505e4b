//! Prints the CustomResourceDefinitions of StaticPodSet as multi-document YAML.

use kube::CustomResourceExt;
use staticpodset_api::{NodeStaticPods, StaticPodSet};

fn main() -> Result<(), serde_yaml::Error> {
    print!("---\n{}", serde_yaml::to_string(&StaticPodSet::crd())?);
    print!("---\n{}", serde_yaml::to_string(&NodeStaticPods::crd())?);
    Ok(())
}
