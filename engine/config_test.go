package engine_test

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/surgepush/surge/engine"
)

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "surge.yaml")
	if err := os.WriteFile(file, []byte("listen: \":9000\"\nping-interval: 40s\nmax-message-size: 2MiB\necho: true\nworkers: 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg engine.Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	cfg.BindFlags(fs)
	args := []string{"--listen", "127.0.0.1:9100"}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := cfg.LoadFile(file); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SURGE_PING_INTERVAL": "50s", "SURGE_LISTEN": ":9200", "SURGE_PONG_TIMEOUT": "3s"}
	if err := cfg.LoadEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	cfg.Normalize()
	if cfg.Listen != "127.0.0.1:9100" {
		t.Errorf("listen %q: flag must win over env and file", cfg.Listen)
	}
	if cfg.PingInterval != 50*time.Second {
		t.Errorf("ping %v: env must win over file", cfg.PingInterval)
	}
	if cfg.PongTimeout != 3*time.Second || cfg.MaxMessageSize != 2<<20 || !cfg.Echo || cfg.Workers != 7 {
		t.Errorf("file/env values not applied: %+v", cfg)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("listne: \":1\"\n"), 0o600)
	var cfg engine.Config
	if err := cfg.LoadFile(bad); err == nil || !strings.Contains(err.Error(), "unknown setting") {
		t.Errorf("unknown key: %v", err)
	}
	err := cfg.LoadEnv(func(k string) (string, bool) {
		if k == "SURGE_PING_INTERVAL" {
			return "soon", true
		}
		return "", false
	})
	if err == nil || !strings.Contains(err.Error(), "SURGE_PING_INTERVAL") {
		t.Errorf("bad env: %v", err)
	}
}

func TestSettingsDocumented(t *testing.T) {
	for _, s := range engine.Settings() {
		if s.Help == "" || !strings.HasPrefix(s.Env, "SURGE_") {
			t.Errorf("setting %+v lacks help or env name", s)
		}
	}
}
