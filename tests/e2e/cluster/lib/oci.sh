# shellcheck shell=bash
# Assembles an OCI image archive from a root filesystem directory, without Docker or a registry.
#
# The archive is an OCI image layout (image-spec v1.0) packed with tar, which
# `ctr -n k8s.io images import` accepts:
#   oci-layout                 {"imageLayoutVersion":"1.0.0"}
#   index.json                 one manifest descriptor; annotation io.containerd.image.name = full
#                              reference (ctr names the image after it), org.opencontainers.image.ref.name = tag
#   blobs/sha256/<layer>       the root filesystem as one uncompressed tar
#                              (mediaType application/vnd.oci.image.layer.v1.tar)
#   blobs/sha256/<config>      {architecture, os, config{Entrypoint,Cmd,Env}, rootfs{type:layers,
#                              diff_ids:[sha256 of the uncompressed layer]}}
#   blobs/sha256/<manifest>    {schemaVersion:2, mediaType, config, layers}
# The layer tar is reproducible (sorted names, owner 0, mtime 0), so unchanged inputs give the same digests.

# oci_image_archive ROOTFS REF OUT_TAR ENTRYPOINT_JSON [ENV_JSON]
#   ENTRYPOINT_JSON e.g. '["/pause"]'; ENV_JSON e.g. '["PATH=/bin"]'
oci_image_archive() {
  local rootfs=$1 ref=$2 out=$3 entrypoint=$4 env=${5:-'["PATH=/usr/local/bin:/usr/bin:/bin"]'}
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/sps-oci.XXXXXX")
  mkdir -p "$work/blobs/sha256"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$work/layer.tar" -C "$rootfs" .
  local layer_digest layer_size
  layer_digest=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  layer_size=$(stat -c %s "$work/layer.tar")
  mv "$work/layer.tar" "$work/blobs/sha256/$layer_digest"

  local config config_digest
  config=$(printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":%s,"Env":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$entrypoint" "$env" "$layer_digest")
  config_digest=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
  printf '%s' "$config" >"$work/blobs/sha256/$config_digest"

  local manifest manifest_digest
  manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
    "$config_digest" "${#config}" "$layer_digest" "$layer_size")
  manifest_digest=$(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)
  printf '%s' "$manifest" >"$work/blobs/sha256/$manifest_digest"

  printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "${#manifest}" "$ref" "${ref##*:}" >"$work/index.json"
  mkdir -p "$(dirname "$out")"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$out.tmp" -C "$work" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  rm -rf "$work"
}
