// Command web is the e2e suites' HTTP workload for hostNetwork pods that must run twice on one
// node at once (a StaticPodSet updating with maxSurge): it listens with SO_REUSEPORT, so the new
// pod binds the port the old one still serves, and on SIGTERM it stops accepting and finishes
// what it has, so the kernel hands every new connection to the other pod.
//
// Usage: web ADDR FILE [READY_FILE] — serves the content of FILE at every path on ADDR
// (host:port), and creates READY_FILE once it listens: a readiness probe that asked the port
// could be answered by the other pod.
package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) != 3 && len(os.Args) != 4 {
		os.Stderr.WriteString("usage: web ADDR FILE [READY_FILE]\n")
		os.Exit(2)
	}
	addr, file := os.Args[1], os.Args[2]
	body, err := os.ReadFile(file)
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	if len(os.Args) == 4 {
		if err := os.WriteFile(os.Args[3], nil, 0o644); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write(body)
	})}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}
