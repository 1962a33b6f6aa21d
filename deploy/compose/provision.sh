#!/bin/sh
# compose.yaml's one-shot `provision` service: a consortium (CA, coordinator, three sites,
# researcher alice, the admin) with each kit in its own volume, each site's region of the
# bundled Fed-TCGA-BRCA and its node.toml. Runs as root only to hand the volumes to the
# image's user (uid 10001); does nothing when the consortium exists already.
# OUT (the volumes' parent, /out) and DEPLOY (this folder, /deploy) are for the tests.
set -eu
out=${OUT:-/out}
deploy=${DEPLOY:-/deploy}
if [ -e "$out/operator/.provisioned" ]; then
    echo "provision: the consortium exists already (volume operator); nothing to do"
    exit 0
fi
work=$(mktemp -d)
biofed provision init --consortium brca --coordinator coordinator:7443 \
    --sites hospital-a,hospital-b,hospital-c --researchers alice --out "$work/consortium"
i=0
for site in hospital-a hospital-b hospital-c; do
    biofed datasets export tcga-brca --site "center-$i" \
        --out "$work/consortium/$site/data/tcga-brca.csv"
    cp "$deploy/node.toml" "$work/consortium/$site/node.toml"
    i=$((i + 1))
done
for kit in coordinator hospital-a hospital-b hospital-c alice; do
    mkdir -p "$out/$kit"
    cp -a "$work/consortium/$kit/." "$out/$kit/"
done
# The operator's volume: the whole consortium folder, the CA's private key included (in a
# real consortium it stays offline; only add/re-issue/revoke need it).
mkdir -p "$out/operator" "$out/coordinator-state"
cp -a "$work/consortium/." "$out/operator/"
rm -rf "$work"
touch "$out/operator/.provisioned"  # last: a run cut short starts again from scratch
chmod 0700 "$out"/*
if [ "$(id -u)" = 0 ]; then  # after chmod: root keeps no CAP_FOWNER in compose
    chown -R 10001:10001 "$out"/*
fi
echo "provision: consortium brca is ready"
