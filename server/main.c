/* headwater: the command line. serve and configtest share one config lookup, so what
 * configtest approves is what serve runs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/log.h"
#include "common/util.h"
#include "common/version.h"
#include "server/derpmap.h"
#include "server/derp_embed.h"
#include "server/policy.h"
#include "server/policy_source.h"
#include "server/server.h"

#define SYSTEM_CONFIG "/etc/headwater/config.yaml"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: headwater COMMAND [-c FILE]\n"
            "\n"
            "commands:\n"
            "  serve        run the coordination server\n"
            "  configtest   check the configuration, print problems and the effective config\n"
            "  version      print the version\n"
            "\n"
            "The configuration is read from -c FILE, else $HEADWATER_CONFIG, else\n"
            SYSTEM_CONFIG " if it exists, else the embedded default\n"
            "(data under ./data, HTTP on 127.0.0.1:8080, admin socket ./data/headwater.sock).\n");
}

struct config_choice {
    const char *path;        /* NULL: the embedded default */
    const char *why;         /* how it was chosen, for the log */
};

static struct config_choice choose_config(const char *opt_path)
{
    if (opt_path)
        return (struct config_choice){opt_path, "given with -c"};
    const char *env = getenv("HEADWATER_CONFIG");
    if (env && *env)
        return (struct config_choice){env, "from $HEADWATER_CONFIG"};
    if (access(SYSTEM_CONFIG, F_OK) == 0)
        return (struct config_choice){SYSTEM_CONFIG, "the system configuration"};
    return (struct config_choice){NULL, NULL};
}

/* Loads the chosen config. Diagnostics go to stderr. Returns 0 or -1 (errors printed). */
static int load_config(const struct config_choice *choice, struct hw_config *cfg)
{
    if (!choice->path) {
        hw_config_defaults(cfg);
        return 0;
    }
    struct hw_config_result res = {0};
    int rc = hw_config_load(choice->path, cfg, &res);
    hw_config_print_diags(choice->path, &res, stderr);
    hw_config_result_free(&res);
    return rc < 0 ? -1 : 0;
}

static void print_banner(const struct hw_config *cfg, const struct hw_server *server,
                         const char *argv0)
{
    /* Suggest the hwctl next to this binary when started by path (./build/headwater). */
    char *hwctl;
    if (strchr(argv0, '/')) {
        char *dir = hw_dirname(argv0);
        hwctl = hw_sprintf("%s/hwctl", dir);
        free(dir);
    } else {
        hwctl = hw_strdup("hwctl");
    }
    const char *url = cfg->server_url ? cfg->server_url : "http://127.0.0.1:8080";
    char *relay;
    if (!server->derp)
        relay = hw_strdup("off");
    else if (hw_derp_embed_has_stun(server->derp))
        relay = hw_sprintf("%s/derp, STUN on udp %s", url, cfg->derp_server_stun_listen_addr);
    else
        relay = hw_sprintf("%s/derp, no STUN (udp %s is taken)", url, cfg->derp_server_stun_listen_addr);
    fprintf(stderr,
            "\n"
            "  headwater is running on the embedded default configuration:\n"
            "    control server  %s (this machine only)\n"
            "    DERP relay      %s\n"
            "    data            %s, %s\n"
            "    admin socket    %s\n"
            "\n"
            "  Next, in another terminal (same directory):\n"
            "    %s namespaces create default\n"
            "    %s preauthkeys create --namespace default --reusable --expiration 24h\n"
            "    tailscale up --login-server %s --authkey <the key printed above>\n"
            "\n"
            "  For a real server, write " SYSTEM_CONFIG " (Headscale's keys work)\n"
            "  and check it with: headwater configtest\n"
            "\n",
            url, relay, cfg->database_sqlite_path, cfg->noise_private_key_path, cfg->unix_socket,
            hwctl, hwctl, url);
    free(relay);
    free(hwctl);
}

static int cmd_configtest(const struct config_choice *choice)
{
    struct hw_config cfg;
    memset(&cfg, 0, sizeof cfg);
    if (choice->path)
        fprintf(stderr, "configuration: %s (%s)\n", choice->path, choice->why);
    else
        fprintf(stderr, "configuration: the embedded default (no -c, no $HEADWATER_CONFIG, no "
                SYSTEM_CONFIG ")\n");
    int rc = load_config(choice, &cfg);
    if (rc == 0) {
        char err[512];
        if (hw_server_check_config(&cfg, err, sizeof err) < 0) {
            fprintf(stderr, "%s: error: %s\n", choice->path ? choice->path : "embedded default", err);
            rc = -1;
        }
        /* The DERP map files are part of the configuration an admin writes. */
        struct hw_derpmap_diags diags = {0};
        if (hw_derpmap_check_paths(&cfg, &diags) > 0)
            rc = -1;
        hw_derpmap_diags_print(&diags, stderr);
        hw_derpmap_diags_free(&diags);
        /* So is the policy file (its syntax, definitions and tests; the namespace names it
         * uses are checked when the server loads it). */
        if (!hw_policy_mode_database(&cfg) && cfg.policy_path && *cfg.policy_path) {
            char perr[1024];
            struct hw_policy *p = hw_policy_load_file(cfg.policy_path, perr, sizeof perr);
            if (!p) {
                fprintf(stderr, "%s: error: %s\n", choice->path ? choice->path : "embedded default", perr);
                rc = -1;
            }
            hw_policy_free(p);
        }
    }
    if (rc == 0) {
        hw_config_dump(&cfg, stdout);
        fflush(stdout);
        fprintf(stderr, "configuration OK\n");
    } else {
        fprintf(stderr, "configuration has errors\n");
    }
    hw_config_free(&cfg);
    return rc == 0 ? 0 : 1;
}

static int cmd_serve(const struct config_choice *choice, const char *argv0)
{
    struct hw_config cfg;
    memset(&cfg, 0, sizeof cfg);
    if (load_config(choice, &cfg) < 0) {
        fprintf(stderr, "headwater: %s has errors; nothing was started\n", choice->path);
        hw_config_free(&cfg);
        return 1;
    }
    hw_log_set_level(cfg.log_level);
    log_info("headwater %s starting", HW_VERSION);
    if (choice->path)
        log_info("configuration %s (%s)", choice->path, choice->why);
    else
        log_info("configuration: the embedded default (no -c, no $HEADWATER_CONFIG, no "
                 SYSTEM_CONFIG ")");

    struct hw_server server;
    char err[1024];
    if (hw_server_start(&server, &cfg, err, sizeof err) < 0) {
        log_error("%s", err);
        fprintf(stderr, "headwater: %s\n", err);
        hw_config_free(&cfg);
        return 1;
    }
    if (!choice->path)
        print_banner(&cfg, &server, argv0);
    hw_server_run(&server);
    hw_server_stop(&server);
    log_info("stopped");
    hw_config_free(&cfg);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("headwater %s\n", HW_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "serve") != 0 && strcmp(cmd, "configtest") != 0) {
        fprintf(stderr, "headwater: unknown command \"%s\"\n\n", cmd);
        usage(stderr);
        return 2;
    }
    const char *opt_path = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "headwater: %s needs a file name\n", a);
                return 2;
            }
            opt_path = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            opt_path = a + 9;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "headwater %s: unknown argument \"%s\"\n\n", cmd, a);
            usage(stderr);
            return 2;
        }
    }
    if (opt_path && !*opt_path) {
        fprintf(stderr, "headwater: -c needs a file name\n");
        return 2;
    }
    struct config_choice choice = choose_config(opt_path);
    if (strcmp(cmd, "configtest") == 0)
        return cmd_configtest(&choice);
    return cmd_serve(&choice, argv[0]);
}
