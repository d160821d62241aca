// Command bundle builds the page's script: it bundles assets/src/main.ts and what it imports
// (the generated TypeScript client and the npm runtime packages in tools/npm) into one minified
// ES module, assets/static/app.js, with esbuild's Go API, headed by a comment that names the
// packages bundled and their licenses. The output depends only on its inputs, so
// `make checkgenerate` can check that the committed bundle is what the sources make.
//
//	go -C tools run ./bundle -root ..
package main

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/evanw/esbuild/pkg/api"
)

func main() {
	root := flag.String("root", "..", "the repository's root `directory`")
	analyze := flag.Bool("analyze", false, "print what takes the bundle's bytes")
	flag.Parse()
	if err := run(*root, *analyze, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bundle:", err)
		os.Exit(1)
	}
}

func run(root string, analyze bool, stdout io.Writer) error {
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	res := api.Build(api.BuildOptions{
		AbsWorkingDir: root,
		EntryPoints:   []string{"assets/src/main.ts"},
		Outfile:       "assets/static/app.js",
		Tsconfig:      "assets/tsconfig.json",
		// The runtime packages are installed with the generators, not beside the sources.
		NodePaths:         []string{filepath.Join(root, "tools/npm/node_modules")},
		Bundle:            true,
		Format:            api.FormatESModule,
		Platform:          api.PlatformBrowser,
		Target:            api.ES2022,
		MinifyWhitespace:  true,
		MinifyIdentifiers: true,
		MinifySyntax:      true,
		TreeShaking:       api.TreeShakingTrue,
		Charset:           api.CharsetUTF8,
		LegalComments:     api.LegalCommentsEndOfFile,
		LogLevel:          api.LogLevelWarning,
		Metafile:          true,
	})
	if len(res.Errors) > 0 {
		return errors.New(api.FormatMessages(res.Errors, api.FormatMessagesOptions{Kind: api.ErrorMessage})[0])
	}
	if analyze {
		fmt.Fprintln(stdout, api.AnalyzeMetafile(res.Metafile, api.AnalyzeMetafileOptions{}))
	}
	banner, err := licenses(root, res.Metafile)
	if err != nil {
		return err
	}
	for _, f := range res.OutputFiles {
		out := append([]byte(banner), f.Contents...)
		if err := os.WriteFile(f.Path, out, 0o644); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, f.Path)
		fmt.Fprintf(stdout, "%s: %d bytes, %d gzipped\n", rel, len(out), gzipSize(out))
	}
	return nil
}

// licenses returns a comment naming every npm package the bundle holds code of, with its
// version and license, read from the packages' package.json. The metafile's paths are relative
// to root.
func licenses(root, metafile string) (string, error) {
	var meta struct {
		Inputs map[string]json.RawMessage `json:"inputs"`
	}
	if err := json.Unmarshal([]byte(metafile), &meta); err != nil {
		return "", err
	}
	seen := map[string]bool{}
	var lines []string
	for input := range meta.Inputs {
		_, rest, ok := strings.Cut(input, "node_modules/")
		if !ok {
			continue
		}
		parts := strings.SplitN(rest, "/", 3)
		dir := parts[0]
		if strings.HasPrefix(dir, "@") && len(parts) > 1 {
			dir += "/" + parts[1]
		}
		pkgDir := input[:strings.Index(input, "node_modules/")] + "node_modules/" + dir
		if seen[pkgDir] {
			continue
		}
		seen[pkgDir] = true
		data, err := os.ReadFile(filepath.Join(root, pkgDir, "package.json"))
		if err != nil {
			return "", err
		}
		var pkg struct{ Name, Version, License string }
		if err := json.Unmarshal(data, &pkg); err != nil {
			return "", fmt.Errorf("%s: %w", pkgDir, err)
		}
		lines = append(lines, fmt.Sprintf(" * %s %s, license %s", pkg.Name, pkg.Version, pkg.License))
	}
	slices.Sort(lines)
	return "/*! taskhub's page script. Bundled packages:\n" + strings.Join(lines, "\n") + "\n */\n", nil
}

func gzipSize(b []byte) int {
	n := &counter{}
	zw, _ := gzip.NewWriterLevel(n, gzip.BestCompression)
	zw.Write(b)
	zw.Close()
	return n.n
}

type counter struct{ n int }

func (c *counter) Write(p []byte) (int, error) { c.n += len(p); return len(p), nil }
