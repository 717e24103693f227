#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "version") == 0) {
        puts("headwater 0.1.0-dev");
        return 0;
    }
    fprintf(stderr, "usage: headwater serve|configtest|version\n");
    return 2;
}
