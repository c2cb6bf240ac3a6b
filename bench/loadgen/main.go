// loadgen: the load bench/run.py needs that etcd's `benchmark` tool has no sub-command for.
// Built like that tool (Debian's Go packages, etcd v3.4 clientv3) and reporting in its format,
// so both servers are driven by the same Go client.
//
//	loadgen [--endpoints=H:P] [--clients=N] [--conns=M] ready [--timeout=60s]
//	loadgen ... lease --total=N          grant N leases (TTL 100), then revoke them: two summaries
//	loadgen ... mixed --total=N [--keys=1000] [--read-percent=80]   linearizable gets and puts
//	loadgen ... load --keys=N [--batch=128] [--key-size=8] [--val-size=256]   bulk load, sequential keys
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	mrand "math/rand"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/pkg/report"
)

var (
	endpoints = flag.String("endpoints", "127.0.0.1:2379", "gRPC endpoint")
	nClients  = flag.Int("clients", 1, "clients")
	nConns    = flag.Int("conns", 1, "connections")
)

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func newClient() *clientv3.Client {
	c, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: 10 * time.Second})
	if err != nil {
		die("dial: %v", err)
	}
	return c
}

func clients() []*clientv3.Client {
	conns := make([]*clientv3.Client, *nConns)
	for i := range conns {
		conns[i] = newClient()
	}
	out := make([]*clientv3.Client, *nClients)
	for i := range out {
		out[i] = conns[i%len(conns)]
	}
	return out
}

// run spreads `total` operations over the clients and reports them as etcd's benchmark does.
func run(cs []*clientv3.Client, total int, op func(c *clientv3.Client, i int) error) string {
	r := report.NewReport("%g")
	work := make(chan int, len(cs))
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func(c *clientv3.Client) {
			defer wg.Done()
			for i := range work {
				st := time.Now()
				err := op(c, i)
				r.Results() <- report.Result{Err: err, Start: st, End: time.Now()}
			}
		}(c)
	}
	rc := r.Run()
	for i := 0; i < total; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	close(r.Results())
	return <-rc
}

func randBytes(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		die("rand: %v", err)
	}
	return string(b)
}

func key(i, size int) string {
	return fmt.Sprintf("%0*d", size, i)
}

func ready(args []string) {
	fs := flag.NewFlagSet("ready", flag.ExitOnError)
	timeout := fs.Duration("timeout", 60*time.Second, "give up after")
	fs.Parse(args)
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		// plain TCP first: a refused gRPC dial would back off for a second
		conn, err := net.DialTimeout("tcp", strings.Split(*endpoints, ",")[0], 100*time.Millisecond)
		if err != nil {
			time.Sleep(2 * time.Millisecond)
			continue
		}
		conn.Close()
		c, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: time.Second})
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err = c.Get(ctx, "x")
			cancel()
			c.Close()
			if err == nil {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	die("not ready after %v", *timeout)
}

func lease(args []string) {
	fs := flag.NewFlagSet("lease", flag.ExitOnError)
	total := fs.Int("total", 1000, "leases")
	fs.Parse(args)
	cs := clients()
	ids := make([]clientv3.LeaseID, *total)
	fmt.Printf("Lease grant summary:\n%s", run(cs, *total, func(c *clientv3.Client, i int) error {
		resp, err := c.Grant(context.Background(), 100)
		if err == nil {
			ids[i] = resp.ID
		}
		return err
	}))
	fmt.Printf("Lease revoke summary:\n%s", run(cs, *total, func(c *clientv3.Client, i int) error {
		_, err := c.Revoke(context.Background(), ids[i])
		return err
	}))
}

func mixed(args []string) {
	fs := flag.NewFlagSet("mixed", flag.ExitOnError)
	total := fs.Int("total", 10000, "requests")
	keys := fs.Int("keys", 1000, "key space (filled first, not timed)")
	readPct := fs.Int("read-percent", 80, "share of gets")
	keySize := fs.Int("key-size", 8, "")
	valSize := fs.Int("val-size", 256, "")
	fs.Parse(args)
	cs := clients()
	val := randBytes(*valSize)
	for i := 0; i < *keys; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100 && j < *keys; j++ {
			ops = append(ops, clientv3.OpPut(key(j, *keySize), val))
		}
		if _, err := cs[0].Txn(context.Background()).Then(ops...).Commit(); err != nil {
			die("fill: %v", err)
		}
	}
	fmt.Print(run(cs, *total, func(c *clientv3.Client, i int) error {
		rnd := mrand.Intn(100)
		k := key(mrand.Intn(*keys), *keySize)
		if rnd < *readPct {
			_, err := c.Get(context.Background(), k)
			return err
		}
		_, err := c.Put(context.Background(), k, val)
		return err
	}))
}

func load(args []string) {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	keys := fs.Int("keys", 100000, "keys")
	batch := fs.Int("batch", 128, "puts per txn (etcd's default --max-txn-ops)")
	keySize := fs.Int("key-size", 8, "")
	valSize := fs.Int("val-size", 256, "")
	fs.Parse(args)
	cs := clients()
	val := randBytes(*valSize)
	txns := (*keys + *batch - 1) / *batch
	fmt.Print(run(cs, txns, func(c *clientv3.Client, t int) error {
		var ops []clientv3.Op
		for j := t * *batch; j < (t+1)**batch && j < *keys; j++ {
			ops = append(ops, clientv3.OpPut(key(j, *keySize), val))
		}
		_, err := c.Txn(context.Background()).Then(ops...).Commit()
		return err
	}))
}

func main() {
	flag.Parse()
	args := flag.Args()
	if len(args) == 0 {
		die("usage: loadgen [flags] ready|lease|mixed|load [flags]")
	}
	switch args[0] {
	case "ready":
		ready(args[1:])
	case "lease":
		lease(args[1:])
	case "mixed":
		mixed(args[1:])
	case "load":
		load(args[1:])
	default:
		die("unknown command %q", args[0])
	}
}
