// Command imagepack writes a single-layer container image as a docker-archive tarball (the
// `docker save` format), which `ctr images import` reads: the node tests have no registry.
//
//	imagepack -o OUT.tar -ref docker.io/library/NAME:TAG -entrypoint /prog [-file SRC:/DEST]...
//
// Files are written with mode 0755, owned by root, with a fixed modification time, so the
// same inputs give the same image.
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path"
	"runtime"
	"strings"
	"time"
)

type files []string

func (f *files) String() string     { return strings.Join(*f, ",") }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	out := flag.String("o", "", "output tarball")
	ref := flag.String("ref", "", "image reference, e.g. docker.io/library/jrw-pause:1")
	entrypoint := flag.String("entrypoint", "", "entrypoint path inside the image")
	var add files
	flag.Var(&add, "file", "SRC:/DEST to put into the image (repeatable)")
	flag.Parse()
	if *out == "" || *ref == "" || *entrypoint == "" || len(add) == 0 {
		fail("-o, -ref, -entrypoint and at least one -file are required")
	}
	mtime := time.Unix(0, 0)

	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	dirs := map[string]bool{}
	for _, spec := range add {
		src, dest, ok := strings.Cut(spec, ":")
		if !ok || !strings.HasPrefix(dest, "/") {
			fail(fmt.Sprintf("-file %q: want SRC:/DEST", spec))
		}
		data, err := os.ReadFile(src)
		if err != nil {
			fail(err.Error())
		}
		name := strings.TrimPrefix(dest, "/")
		for d := path.Dir(name); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			must(lw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime}))
		}
		must(lw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(data)), ModTime: mtime}))
		_, err = lw.Write(data)
		must(err)
	}
	must(lw.Close())
	layerSum := sha256.Sum256(layer.Bytes())
	layerID := hex.EncodeToString(layerSum[:])

	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      mtime.UTC().Format(time.RFC3339),
		"config": map[string]any{
			"Entrypoint": []string{*entrypoint},
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerID}},
	})
	must(err)
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   configName,
		"RepoTags": []string{*ref},
		"Layers":   []string{layerID + "/layer.tar"},
	}})
	must(err)

	f, err := os.Create(*out)
	must(err)
	tw := tar.NewWriter(f)
	put := func(name string, data []byte) {
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}))
		_, err := tw.Write(data)
		must(err)
	}
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: layerID + "/", Mode: 0o755, ModTime: mtime}))
	put(layerID+"/layer.tar", layer.Bytes())
	put(configName, config)
	put("manifest.json", manifest)
	must(tw.Close())
	must(f.Close())
}

func must(err error) {
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "imagepack:", msg)
	os.Exit(2)
}
